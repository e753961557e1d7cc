package local

import (
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The project IDs the driver gives volumes: above the small numbers
// administrators pick by hand (/etc/projid), below the range the kubelet's
// own quota monitoring draws from (1048577 and up).
const (
	firstProjectID uint32 = 1 << 19 // 524288
	lastProjectID  uint32 = 1<<20 - 1
)

// projectIDs hands out project IDs, one per volume. The volumes' records
// are the durable truth (New fills the set from them); the set is the
// in-memory reservation that makes allocation atomic: an ID is taken under
// the mutex before the record that names it is written, and given back
// when the create fails or the volume is deleted.
type projectIDs struct {
	mu          sync.Mutex
	used        map[uint32]string // ID -> volume
	first, last uint32
}

func newProjectIDs(first, last uint32) *projectIDs {
	return &projectIDs{used: map[uint32]string{}, first: first, last: last}
}

// add marks an ID used by a volume found at start; an ID recorded for two
// volumes is an error (both keep it, the caller reports it).
func (p *projectIDs) add(id uint32, vol string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if other, ok := p.used[id]; ok && other != vol {
		return fmt.Errorf("project ID %d is recorded for both volume %s and volume %s", id, other, vol)
	}
	p.used[id] = vol
	return nil
}

// allocate takes the lowest free ID for vol. inUse asks the filesystem
// whether an ID nobody recorded still owns files (someone else's project):
// those are skipped.
func (p *projectIDs) allocate(vol string, inUse func(id uint32) (bool, error)) (uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := p.first; id <= p.last && id >= p.first; id++ {
		if _, ok := p.used[id]; ok {
			continue
		}
		busy, err := inUse(id)
		if err != nil {
			return 0, status.Errorf(codes.Internal, "read the quota of project %d: %v", id, err)
		}
		if busy {
			continue
		}
		p.used[id] = vol
		return id, nil
	}
	return 0, status.Errorf(codes.ResourceExhausted, "no free project ID left in %d-%d for volume %s", p.first, p.last, vol)
}

// release frees the ID if vol holds it.
func (p *projectIDs) release(id uint32, vol string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used[id] == vol {
		delete(p.used, id)
	}
}
