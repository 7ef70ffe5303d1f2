// loadgen joins LiveKit rooms as real clients and measures the audio they hear.
//
//	LIVEKIT_API_KEY=… LIVEKIT_API_SECRET=… SSL_CERT_FILE=ca.pem \
//	  loadgen --url wss://livekit.example --shape meeting --rooms 4 --size 6 --duration 60 --audio loop.ogg
//
// Every participant is a full WebRTC client of the server SDK (pion): TLS websocket
// signalling, ICE (UDP, TCP or TURN as the server offers, or relay only), DTLS-SRTP media.
// Publishers send a pre-encoded Opus speech loop (one packet per 20 ms, no transcoding:
// sending costs a packetise and an SRTP seal); subscribers read RTP and count packets, gaps
// (loss), bytes and RFC 3550 jitter per track, never decoding. That keeps the generator far
// cheaper than the SFU it loads; it reports its own CPU so a run can show it.
//
// It prints one JSON object per line on stdout: plan, ready, window_start, stats (each
// --interval), window_end (the measurement window's totals), done. The key and secret come
// from the environment (never argv); tokens are minted here. Rooms are created with an
// explicit dispatch to an agent name nobody serves, so a deployed agent that auto-joins every
// room stays out of SFU measurements.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/report"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
)

const (
	frameDuration = 20 * time.Millisecond
	maxMembers    = 5000
	maxDuration   = 6 * time.Hour
	// NoAgentName is dispatched explicitly so LiveKit skips its default (automatic) dispatch.
	noAgentName = "voicestack-loadgen-no-agent"
)

type config struct {
	url, shape, audio, prefix, iceMode string
	rooms, size, joinConcurrency       int
	duration, warmup, interval         time.Duration
	readyTimeout, connectTimeout       time.Duration
	departureTimeout                   int
	allowAgent, control                bool
	cpuProfile, interceptors           string
	apiKey, apiSecret                  string
}

func parseFlags() (config, error) {
	var c config
	flag.StringVar(&c.url, "url", "", "LiveKit URL (wss://…)")
	flag.StringVar(&c.shape, "shape", "agent", "room shape: agent (1:1 user + agent-like publisher), meeting, broadcast")
	flag.IntVar(&c.rooms, "rooms", 1, "rooms of that shape")
	flag.IntVar(&c.size, "size", 5, "meeting: speakers per room; broadcast: listeners per room")
	flag.StringVar(&c.audio, "audio", "", "Ogg Opus speech loop (bench/loadgen/make_audio.py)")
	flag.StringVar(&c.prefix, "prefix", "", "room name prefix (default: lg-<random>)")
	flag.StringVar(&c.iceMode, "ice", "all", "ICE transport policy: all (UDP first, as a browser) or relay (TURN only)")
	flag.DurationVar(&c.duration, "duration", 30*time.Second, "measurement window")
	flag.DurationVar(&c.warmup, "warmup", 3*time.Second, "time between everyone hearing everyone and the window")
	flag.DurationVar(&c.interval, "interval", 5*time.Second, "stats line period")
	flag.DurationVar(&c.readyTimeout, "ready-timeout", 120*time.Second, "deadline for all joins and subscriptions")
	flag.DurationVar(&c.connectTimeout, "connect-timeout", 20*time.Second, "deadline of one join")
	flag.IntVar(&c.joinConcurrency, "join-concurrency", 8, "joins in flight at once")
	flag.IntVar(&c.departureTimeout, "departure-timeout", 5, "seconds LiveKit keeps a room after its last participant left")
	flag.BoolVar(&c.control, "control", false, "wait for a line on stdin before the window starts and before leaving (a harness reads the server in between)")
	flag.BoolVar(&c.allowAgent, "allow-agent", false, "let the deployed agent be dispatched to the rooms")
	flag.StringVar(&c.interceptors, "interceptors", "sdk", "sdk (the SDK's default set), reports (RTCP sender/receiver reports only), none")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the run here (where the generator's own CPU goes)")
	flag.Parse()
	c.apiKey, c.apiSecret = os.Getenv("LIVEKIT_API_KEY"), os.Getenv("LIVEKIT_API_SECRET")
	switch {
	case c.url == "":
		return c, fmt.Errorf("--url is empty; give the LiveKit URL (livekit_url in .stack/<env>/outputs.json)")
	case c.apiKey == "" || c.apiSecret == "":
		return c, fmt.Errorf("LIVEKIT_API_KEY and LIVEKIT_API_SECRET must be set in the environment")
	case c.audio == "":
		return c, fmt.Errorf("--audio is empty; build the loop with bench/loadgen/make_audio.py")
	case c.duration <= 0 || c.duration > maxDuration:
		return c, fmt.Errorf("--duration is %s; give more than 0 and at most %s", c.duration, maxDuration)
	case c.interval <= 0:
		return c, fmt.Errorf("--interval is %s; give a positive period", c.interval)
	case c.joinConcurrency < 1:
		return c, fmt.Errorf("--join-concurrency is %d; give at least 1", c.joinConcurrency)
	case c.iceMode != "all" && c.iceMode != "relay":
		return c, fmt.Errorf("--ice is %q; use all or relay", c.iceMode)
	}
	if c.prefix == "" {
		c.prefix = fmt.Sprintf("lg-%06x", rand.Intn(1<<24))
	}
	return c, nil
}

// emitter writes one JSON object per line; lines from several goroutines never interleave.
type emitter struct {
	mu    sync.Mutex
	start time.Time
	enc   *json.Encoder
}

func (e *emitter) emit(event string, fields map[string]any) {
	fields["event"] = event
	fields["t"] = time.Since(e.start).Seconds()
	e.mu.Lock()
	defer e.mu.Unlock()
	_ = e.enc.Encode(fields)
}

type generator struct {
	cfg    config
	frames [][]byte
	ev     *emitter
	stop   chan struct{}

	mu     sync.Mutex
	tracks []*rxStats
	rooms  []*lksdk.Room

	connected, subscribed, joinErrors  atomic.Int64
	disconnected, reconnecting         atomic.Int64
	txPackets, txErrors, publishErrors atomic.Int64
	firstJoinError                     atomic.Value
}

func (g *generator) token(m member) (string, error) {
	canPublish, canSubscribe := m.publish, true
	at := auth.NewAccessToken(g.cfg.apiKey, g.cfg.apiSecret).
		SetIdentity(m.identity).
		SetName(m.identity).
		SetValidFor(g.cfg.readyTimeout + g.cfg.warmup + g.cfg.duration + 10*time.Minute).
		SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: m.room, CanPublish: &canPublish, CanSubscribe: &canSubscribe})
	roomConfig := &livekit.RoomConfiguration{DepartureTimeout: uint32(g.cfg.departureTimeout)}
	if !g.cfg.allowAgent {
		roomConfig.Agents = []*livekit.RoomAgentDispatch{{AgentName: noAgentName}}
	}
	at.SetRoomConfig(roomConfig)
	if m.agent {
		at.SetKind(livekit.ParticipantInfo_AGENT)
	}
	return at.ToJWT()
}

// receive counts every RTP packet of one subscribed audio track until it ends.
func (g *generator) receive(track *webrtc.TrackRemote) {
	st := &rxStats{}
	g.mu.Lock()
	g.tracks = append(g.tracks, st)
	g.mu.Unlock()
	g.subscribed.Add(1)
	go func() {
		defer g.subscribed.Add(-1)
		buf := make([]byte, 1500)
		var h rtp.Header
		for {
			n, _, err := track.Read(buf)
			if err != nil {
				return
			}
			if _, err := h.Unmarshal(buf[:n]); err != nil {
				continue
			}
			st.add(h.SequenceNumber, h.Timestamp, n, time.Now())
		}
	}()
}

// send plays the speech loop into track, one Opus packet per 20 ms, from a random point.
func (g *generator) send(track *lksdk.LocalTrack) {
	go func() {
		// A random phase spreads the publishers' packets over the 20 ms period, as real
		// clients are; a random offset into the loop keeps rooms from speaking in unison.
		time.Sleep(time.Duration(rand.Int63n(int64(frameDuration))))
		ticker := time.NewTicker(frameDuration)
		defer ticker.Stop()
		i := rand.Intn(len(g.frames))
		for {
			select {
			case <-g.stop:
				return
			case <-ticker.C:
			}
			if err := track.WriteSample(media.Sample{Data: g.frames[i%len(g.frames)], Duration: frameDuration}, nil); err != nil {
				g.txErrors.Add(1)
			} else {
				g.txPackets.Add(1)
			}
			i++
		}
	}()
}

func (g *generator) join(m member) error {
	token, err := g.token(m)
	if err != nil {
		return fmt.Errorf("failed to mint a token for %s: %w", m.identity, err)
	}
	cb := lksdk.NewRoomCallback()
	cb.OnTrackSubscribed = func(track *webrtc.TrackRemote, _ *lksdk.RemoteTrackPublication, _ *lksdk.RemoteParticipant) {
		if track.Kind() == webrtc.RTPCodecTypeAudio {
			g.receive(track)
		}
	}
	cb.OnDisconnected = func() { g.disconnected.Add(1) }
	cb.OnReconnecting = func() { g.reconnecting.Add(1) }
	opts := []lksdk.ConnectOption{lksdk.WithAutoSubscribe(true), lksdk.WithConnectTimeout(g.cfg.connectTimeout)}
	switch g.cfg.interceptors {
	case "none":
		opts = append(opts, lksdk.WithInterceptors([]interceptor.Factory{}))
	case "reports":
		opts = append(opts, lksdk.WithInterceptors([]interceptor.Factory{reportFactory{}}))
	}
	if g.cfg.iceMode == "relay" {
		opts = append(opts, lksdk.WithICETransportPolicy(webrtc.ICETransportPolicyRelay))
	}
	room, err := lksdk.ConnectToRoomWithToken(g.cfg.url, token, cb, opts...)
	if err != nil {
		return fmt.Errorf("failed to join %s as %s: %w", m.room, m.identity, err)
	}
	g.mu.Lock()
	g.rooms = append(g.rooms, room)
	g.mu.Unlock()
	g.connected.Add(1)
	if !m.publish {
		return nil
	}
	track, err := lksdk.NewLocalTrack(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: opusClock, Channels: 2})
	if err != nil {
		return fmt.Errorf("failed to create an Opus track for %s: %w", m.identity, err)
	}
	if _, err := room.LocalParticipant.PublishTrack(track, &lksdk.TrackPublicationOptions{
		Name: "microphone", Source: livekit.TrackSource_MICROPHONE, DisableDTX: true,
	}); err != nil {
		g.publishErrors.Add(1)
		return fmt.Errorf("failed to publish audio as %s in %s: %w", m.identity, m.room, err)
	}
	g.send(track)
	return nil
}

// joinAll joins every member, `join-concurrency` at a time, in room order.
func (g *generator) joinAll(members []member) {
	sem := make(chan struct{}, g.cfg.joinConcurrency)
	var wg sync.WaitGroup
	for _, m := range members {
		select {
		case <-g.stop:
			return
		case sem <- struct{}{}:
		}
		wg.Add(1)
		go func(m member) {
			defer func() { <-sem; wg.Done() }()
			if err := g.join(m); err != nil {
				if g.joinErrors.Add(1) == 1 {
					g.firstJoinError.Store(err.Error())
				}
			}
		}(m)
	}
	wg.Wait()
}

func (g *generator) snapshots() []rxSnapshot {
	g.mu.Lock()
	tracks := append([]*rxStats(nil), g.tracks...)
	g.mu.Unlock()
	out := make([]rxSnapshot, len(tracks))
	for i, t := range tracks {
		out[i] = t.snapshot()
	}
	return out
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func (g *generator) counters() map[string]any {
	fields := map[string]any{
		"connected": g.connected.Load(), "subscribed": g.subscribed.Load(),
		"join_errors": g.joinErrors.Load(), "publish_errors": g.publishErrors.Load(),
		"disconnected": g.disconnected.Load(), "reconnecting": g.reconnecting.Load(),
		"tx_packets": g.txPackets.Load(), "tx_errors": g.txErrors.Load(),
		"cpu_s": cpuSeconds(),
	}
	if e, ok := g.firstJoinError.Load().(string); ok {
		fields["first_join_error"] = e
	}
	return fields
}

func merge(a map[string]any, w windowTotals) map[string]any {
	raw, _ := json.Marshal(w)
	_ = json.Unmarshal(raw, &a)
	return a
}

// wait sleeps d, or less if the run is stopped; false when stopped.
func (g *generator) wait(d time.Duration) bool {
	select {
	case <-g.stop:
		return false
	case <-time.After(d):
		return true
	}
}

// await tells a controlling harness where the run is and waits (bounded) for its go-ahead, so
// the server's counters it reads bracket a period of full, steady load. No-op without --control.
func (g *generator) await(stdin *bufio.Reader, event string) bool {
	if stdin == nil {
		return true
	}
	g.ev.emit(event, map[string]any{})
	line := make(chan struct{})
	go func() { _, _ = stdin.ReadString('\n'); close(line) }()
	select {
	case <-line:
		return true
	case <-g.stop:
		return false
	case <-time.After(2 * time.Minute):
		return true
	}
}

func (g *generator) disconnectAll() {
	g.mu.Lock()
	rooms := append([]*lksdk.Room(nil), g.rooms...)
	g.mu.Unlock()
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for _, r := range rooms {
		wg.Add(1)
		sem <- struct{}{}
		go func(r *lksdk.Room) {
			defer func() { <-sem; wg.Done() }()
			r.Disconnect()
		}(r)
	}
	wg.Wait()
}

func run() error {
	cfg, err := parseFlags()
	if err != nil {
		return err
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return fmt.Errorf("failed to create the CPU profile %s: %w", cfg.cpuProfile, err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("failed to start the CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	logger.InitFromConfig(&logger.Config{Level: "error"}, "loadgen")
	lksdk.SetLogger(logger.GetLogger())
	frames, err := loadOpus(cfg.audio)
	if err != nil {
		return err
	}
	members, forwarded, err := plan(cfg.shape, cfg.rooms, cfg.size, cfg.prefix)
	if err != nil {
		return err
	}
	if len(members) > maxMembers {
		return fmt.Errorf("the plan has %d participants; at most %d per generator — run several generators", len(members), maxMembers)
	}
	publishers := 0
	for _, m := range members {
		if m.publish {
			publishers++
		}
	}
	g := &generator{cfg: cfg, frames: frames, stop: make(chan struct{}),
		ev: &emitter{start: time.Now(), enc: json.NewEncoder(os.Stdout)}}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	var stopOnce sync.Once
	stopAll := func() { stopOnce.Do(func() { close(g.stop) }) }
	go func() { <-signals; stopAll() }()

	g.ev.emit("plan", map[string]any{"shape": cfg.shape, "rooms": cfg.rooms, "size": cfg.size,
		"participants": len(members), "publishers": publishers, "forwarded_streams": forwarded,
		"prefix": cfg.prefix, "ice": cfg.iceMode, "loop_frames": len(frames)})

	// Joins, then the deadline poll for every subscription (or the ready timeout).
	joinStart := time.Now()
	deadline := joinStart.Add(cfg.readyTimeout)
	joined := make(chan struct{})
	go func() { g.joinAll(members); close(joined) }()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	complete := false
	var failedAt time.Time
poll:
	for {
		select {
		case <-g.stop:
			break poll
		case <-ctx.Done():
			break poll
		case <-time.After(100 * time.Millisecond):
		}
		select {
		case <-joined:
			if g.subscribed.Load() >= int64(forwarded) {
				complete = true
				break poll
			}
			// Failed joins never bring their subscriptions: give the others a grace period.
			if g.joinErrors.Load() > 0 {
				if failedAt.IsZero() {
					failedAt = time.Now()
				} else if time.Since(failedAt) > 5*time.Second {
					break poll
				}
			}
		default:
		}
	}
	ready := g.counters()
	ready["complete"] = complete
	ready["join_s"] = time.Since(joinStart).Seconds()
	ready["expected_subscriptions"] = forwarded
	g.ev.emit("ready", ready)

	var stdin *bufio.Reader
	if cfg.control {
		stdin = bufio.NewReader(os.Stdin)
	}
	if g.wait(cfg.warmup) && g.await(stdin, "await_start") {
		start, startAt, startCPU := g.snapshots(), time.Now(), cpuSeconds()
		g.ev.emit("window_start", g.counters())
		prev, prevAt := start, startAt
		end := startAt.Add(cfg.duration)
		for time.Now().Before(end) {
			step := cfg.interval
			if left := time.Until(end); left < step {
				step = left
			}
			if !g.wait(step) {
				break
			}
			now, at := g.snapshots(), time.Now()
			g.ev.emit("stats", merge(g.counters(), compare(prev, now, at.Sub(prevAt).Seconds())))
			prev, prevAt = now, at
		}
		final, finalAt := g.snapshots(), time.Now()
		seconds := finalAt.Sub(startAt).Seconds()
		w := merge(g.counters(), compare(start, final, seconds))
		w["loadgen_cpu_cores"] = (cpuSeconds() - startCPU) / seconds
		w["complete"] = complete
		w["forwarded_streams"] = forwarded
		g.ev.emit("window_end", w)
		g.await(stdin, "await_stop")
	}
	stopAll()
	g.disconnectAll()
	g.ev.emit("done", g.counters())
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
}

// reportFactory builds pion's RTCP report interceptors (receiver and sender reports), so the
// SFU still hears loss and RTT from every client as it would from a browser.
type reportFactory struct{}

func (reportFactory) NewInterceptor(id string) (interceptor.Interceptor, error) {
	recv, err := report.NewReceiverInterceptor()
	if err != nil {
		return nil, err
	}
	send, err := report.NewSenderInterceptor()
	if err != nil {
		return nil, err
	}
	r, err := recv.NewInterceptor(id)
	if err != nil {
		return nil, err
	}
	sd, err := send.NewInterceptor(id)
	if err != nil {
		return nil, err
	}
	return interceptor.NewChain([]interceptor.Interceptor{r, sd}), nil
}
