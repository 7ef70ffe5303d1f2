package main

import (
	"math"
	"sort"
	"sync"
	"time"
)

// opusClock is the RTP clock rate of Opus (RFC 7587): 48 kHz whatever the sampling rate.
const opusClock = 48000

// rxStats counts what one subscribed track delivered, from its RTP headers alone: unique
// packets, the sequence-number span they should fill (so gaps are loss), bytes, and the
// RFC 3550 interarrival jitter. One goroutine writes (the track's reader); the reporter reads
// snapshots under the lock.
type rxStats struct {
	mu       sync.Mutex
	started  bool
	baseSeq  int64  // extended sequence number of the first packet
	maxSeq   int64  // highest extended sequence number seen
	recent   uint64 // bit i set: packet maxSeq-i arrived (duplicate and reorder detection)
	received uint64 // unique packets
	dups     uint64
	late     uint64 // older than the 64-packet window: counted as lost, ignored
	bytes    uint64 // RTP header + payload
	transit  uint32 // previous arrival-minus-timestamp, RTP units
	jitter   float64
	lastAt   time.Time
}

// extend turns a 16-bit sequence number into one that counts across wrap-arounds, relative
// to the highest seen (a packet is taken as the nearer of ahead or behind).
func extend(maxSeq int64, seq uint16) int64 {
	return maxSeq + int64(int16(seq-uint16(maxSeq)))
}

// add records one packet that arrived at `at`.
func (s *rxStats) add(seq uint16, ts uint32, size int, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	arrival := uint32(at.UnixNano() / int64(time.Second/opusClock))
	s.lastAt = at
	if !s.started {
		s.started = true
		s.baseSeq, s.maxSeq, s.recent = int64(seq), int64(seq), 1
		s.received, s.bytes = 1, uint64(size)
		s.transit = arrival - ts
		return
	}
	ext := extend(s.maxSeq, seq)
	switch {
	case ext > s.maxSeq:
		shift := ext - s.maxSeq
		if shift >= 64 {
			s.recent = 0
		} else {
			s.recent <<= uint(shift)
		}
		s.recent |= 1
		s.maxSeq = ext
		// RFC 3550 A.8, on in-order packets only: J += (|D| - J) / 16.
		transit := arrival - ts
		d := math.Abs(float64(int32(transit - s.transit)))
		s.transit = transit
		s.jitter += (d - s.jitter) / 16
	case s.maxSeq-ext >= 64:
		s.late++
		return
	default:
		bit := uint64(1) << uint(s.maxSeq-ext)
		if s.recent&bit != 0 {
			s.dups++
			return
		}
		s.recent |= bit
	}
	if ext < s.baseSeq {
		s.baseSeq = ext
	}
	s.received++
	s.bytes += uint64(size)
}

type rxSnapshot struct {
	received, expected, bytes, dups uint64
	jitterMs                        float64
	lastAt                          time.Time
	started                         bool
}

func (s *rxStats) snapshot() rxSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started {
		return rxSnapshot{}
	}
	return rxSnapshot{
		received: s.received, expected: uint64(s.maxSeq - s.baseSeq + 1), bytes: s.bytes,
		dups: s.dups, jitterMs: s.jitter * 1000 / opusClock, lastAt: s.lastAt, started: true,
	}
}

// windowTotals compares two snapshots of every track (same order) over a window.
type windowTotals struct {
	Streams       int     `json:"streams"`         // tracks with a snapshot at both ends
	Stalled       int     `json:"stalled_streams"` // of those, tracks that got nothing in the window
	Received      uint64  `json:"rx_packets"`
	Expected      uint64  `json:"rx_expected"`
	LossPct       float64 `json:"loss_pct"`
	KbpsPerStream float64 `json:"rx_kbps_per_stream"` // RTP header + payload
	PpsPerStream  float64 `json:"rx_pps_per_stream"`
	JitterMsMean  float64 `json:"jitter_ms_mean"`
	JitterMsP95   float64 `json:"jitter_ms_p95"`
	JitterMsMax   float64 `json:"jitter_ms_max"`
	Seconds       float64 `json:"seconds"`
}

func compare(before, after []rxSnapshot, seconds float64) windowTotals {
	w := windowTotals{Seconds: seconds}
	var bytes uint64
	jitters := make([]float64, 0, len(after))
	for i := range after {
		a := after[i]
		if !a.started || i >= len(before) {
			continue
		}
		b := before[i]
		w.Streams++
		rx, exp := a.received-b.received, a.expected-b.expected
		if !b.started { // the track started inside the window: count from its first packet
			rx, exp = a.received, a.expected
		}
		if rx == 0 {
			w.Stalled++
		}
		w.Received += rx
		w.Expected += exp
		bytes += a.bytes - b.bytes
		jitters = append(jitters, a.jitterMs)
	}
	if w.Expected > 0 {
		lost := float64(w.Expected) - float64(w.Received)
		w.LossPct = math.Max(0, 100*lost/float64(w.Expected))
	}
	if w.Streams > 0 && seconds > 0 {
		w.KbpsPerStream = float64(bytes) * 8 / 1000 / seconds / float64(w.Streams)
		w.PpsPerStream = float64(w.Received) / seconds / float64(w.Streams)
	}
	if len(jitters) > 0 {
		sort.Float64s(jitters)
		sum := 0.0
		for _, j := range jitters {
			sum += j
		}
		w.JitterMsMean = sum / float64(len(jitters))
		w.JitterMsP95 = jitters[int(math.Round(0.95*float64(len(jitters)-1)))]
		w.JitterMsMax = jitters[len(jitters)-1]
	}
	return w
}
