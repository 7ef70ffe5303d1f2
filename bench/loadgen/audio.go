package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/livekit/server-sdk-go/v2/pkg/oggreader"
)

// loadOpus reads every Opus packet of an Ogg Opus file (made by make_audio.py) into memory,
// so all publishers share one copy and sending costs no file I/O.
func loadOpus(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read the speech loop %s: %w (build it with bench/loadgen/make_audio.py)", path, err)
	}
	reader, header, err := oggreader.NewOggReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("failed to parse %s as Ogg Opus: %w", path, err)
	}
	if header.Channels != 1 {
		return nil, fmt.Errorf("%s has %d channels; the loop must be mono", path, header.Channels)
	}
	var frames [][]byte
	for {
		packet, err := reader.ReadPacket()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("failed to read an Opus packet from %s: %w", path, err)
		}
		if len(packet) == 0 || bytes.HasPrefix(packet, []byte("OpusTags")) {
			continue
		}
		frames = append(frames, packet)
	}
	if len(frames) < 50 {
		return nil, fmt.Errorf("%s holds %d Opus packets; expected at least a second of audio", path, len(frames))
	}
	return frames, nil
}
