package main

import "fmt"

// member is one participant the generator joins.
type member struct {
	room     string
	identity string
	publish  bool // sends the speech loop
	agent    bool // the agent-like side of a 1:1 room (a publisher that also listens)
}

// plan lists the participants of `rooms` rooms of one shape, and how many audio streams the
// SFU forwards once everyone is subscribed (each publisher's track to every other member).
//
//	agent:     a user and an agent-like publisher, both talking: 2 forwarded streams per room
//	meeting:   `size` speakers, everyone hears everyone: size*(size-1)
//	broadcast: one speaker, `size` listeners (subscribe only): size
func plan(shape string, rooms, size int, prefix string) ([]member, int, error) {
	if rooms < 1 {
		return nil, 0, fmt.Errorf("--rooms is %d; give at least 1", rooms)
	}
	var members []member
	forwarded := 0
	for r := 0; r < rooms; r++ {
		name := fmt.Sprintf("%s-%s-%04d", prefix, shape, r)
		switch shape {
		case "agent":
			members = append(members,
				member{room: name, identity: name + "-user", publish: true},
				member{room: name, identity: name + "-agent", publish: true, agent: true})
			forwarded += 2
		case "meeting":
			if size < 2 {
				return nil, 0, fmt.Errorf("--size is %d; a meeting needs at least 2 speakers", size)
			}
			for i := 0; i < size; i++ {
				members = append(members, member{room: name, identity: fmt.Sprintf("%s-s%02d", name, i), publish: true})
			}
			forwarded += size * (size - 1)
		case "broadcast":
			if size < 1 {
				return nil, 0, fmt.Errorf("--size is %d; a broadcast needs at least 1 listener", size)
			}
			members = append(members, member{room: name, identity: name + "-speaker", publish: true})
			for i := 0; i < size; i++ {
				members = append(members, member{room: name, identity: fmt.Sprintf("%s-l%04d", name, i)})
			}
			forwarded += size
		default:
			return nil, 0, fmt.Errorf("--shape is %q; use agent, meeting or broadcast", shape)
		}
	}
	return members, forwarded, nil
}
