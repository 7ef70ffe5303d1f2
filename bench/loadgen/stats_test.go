package main

import (
	"math"
	"testing"
	"time"
)

// feed sends packets with the given sequence numbers, 20 ms apart in both RTP time and arrival.
func feed(s *rxStats, seqs []uint16, start time.Time) {
	for _, seq := range seqs {
		n := int64(uint16(seq - seqs[0]))
		s.add(seq, uint32(n*960), 100, start.Add(time.Duration(n)*frameDuration))
	}
}

func TestGapsCountAsLoss(t *testing.T) {
	s := &rxStats{}
	feed(s, []uint16{10, 11, 12, 14, 15, 19}, time.Unix(1000, 0)) // 13, 16, 17, 18 missing
	snap := s.snapshot()
	if snap.received != 6 || snap.expected != 10 {
		t.Fatalf("received %d of %d expected; want 6 of 10", snap.received, snap.expected)
	}
	w := compare([]rxSnapshot{{}}, []rxSnapshot{snap}, 1)
	if math.Abs(w.LossPct-40) > 1e-9 {
		t.Fatalf("loss %.2f%%; want 40%%", w.LossPct)
	}
}

func TestSequenceWrapIsNotLoss(t *testing.T) {
	s := &rxStats{}
	feed(s, []uint16{65533, 65534, 65535, 0, 1, 2}, time.Unix(1000, 0))
	if snap := s.snapshot(); snap.received != 6 || snap.expected != 6 {
		t.Fatalf("across the wrap: received %d of %d; want 6 of 6", snap.received, snap.expected)
	}
}

func TestDuplicatesAndReorderingAreCountedOnce(t *testing.T) {
	s := &rxStats{}
	at := time.Unix(1000, 0)
	for _, seq := range []uint16{1, 3, 2, 3, 4, 2} {
		s.add(seq, uint32(seq)*960, 100, at)
	}
	snap := s.snapshot()
	if snap.received != 4 || snap.expected != 4 || snap.dups != 2 {
		t.Fatalf("received %d of %d with %d duplicates; want 4 of 4 with 2", snap.received, snap.expected, snap.dups)
	}
}

func TestEvenPacingHasNoJitterAndUnevenHas(t *testing.T) {
	even := &rxStats{}
	feed(even, []uint16{1, 2, 3, 4, 5, 6, 7, 8}, time.Unix(1000, 0))
	if j := even.snapshot().jitterMs; j > 0.01 {
		t.Fatalf("evenly paced packets show %.3f ms jitter; want ~0", j)
	}
	uneven := &rxStats{}
	at := time.Unix(1000, 0)
	for i := 0; i < 200; i++ {
		late := time.Duration(0)
		if i%2 == 1 {
			late = 10 * time.Millisecond // every other packet 10 ms late
		}
		uneven.add(uint16(i), uint32(i*960), 100, at.Add(time.Duration(i)*frameDuration+late))
	}
	if j := uneven.snapshot().jitterMs; j < 8 || j > 12 {
		t.Fatalf("alternating 10 ms delays give %.2f ms jitter; want ~10 (RFC 3550)", j)
	}
}

func TestWindowCountsOnlyItsOwnPackets(t *testing.T) {
	s := &rxStats{}
	feed(s, []uint16{1, 2, 3, 4}, time.Unix(1000, 0))
	before := s.snapshot()
	feed(s, []uint16{5, 7, 8}, time.Unix(1001, 0)) // 6 lost inside the window
	w := compare([]rxSnapshot{before}, []rxSnapshot{s.snapshot()}, 2)
	if w.Received != 3 || w.Expected != 4 || w.Streams != 1 || w.Stalled != 0 {
		t.Fatalf("window: %+v; want 3 received of 4 expected on 1 stream", w)
	}
}

func TestPlanCountsForwardedStreams(t *testing.T) {
	cases := []struct {
		shape             string
		rooms, size       int
		members, forwards int
	}{
		{"agent", 3, 0, 6, 6},
		{"meeting", 2, 5, 10, 40},
		{"broadcast", 1, 50, 51, 50},
	}
	for _, c := range cases {
		m, f, err := plan(c.shape, c.rooms, c.size, "p")
		if err != nil || len(m) != c.members || f != c.forwards {
			t.Fatalf("%s: %d members, %d forwarded, %v; want %d, %d", c.shape, len(m), f, err, c.members, c.forwards)
		}
	}
	if _, _, err := plan("webinar", 1, 1, "p"); err == nil {
		t.Fatal("an unknown shape was accepted")
	}
}
