// Package registry reads and writes the service registry the Rust examples share, so a Go
// program can be a node that their clients find, or a client that finds their nodes.
//
// The registry is a NATS JetStream key-value bucket, and this is the whole contract:
//
//   - the bucket is "micro_registry";
//   - one key per node, "<service>.<id>", each part escaped so that it stays one token:
//     every byte other than A-Z a-z 0-9 - _ is written as =XX (upper-case hex);
//   - the value is JSON: {"node":{"service":…,"id":…,"address":"host:port","metadata":{…}},
//     "ttl_ms":N};
//   - a node is live while its last write is younger than its TTL, counted from the time
//     the NATS server stamped on that write (NATS 2.9 cannot expire single keys, so readers
//     decide); a node writes its key again every third of its TTL, and deletes it when it
//     stops gracefully.
package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Bucket is the key-value bucket every example shares.
const Bucket = "micro_registry"

// MaxTTL is the longest TTL the Rust registry accepts: its bucket forgets a key nobody
// rewrote for an hour, and heartbeats must come well before that.
const MaxTTL = 10 * time.Minute

// Node is one running instance of a service, as the Rust examples describe it.
type Node struct {
	Service  string            `json:"service"`
	ID       string            `json:"id"`
	Address  string            `json:"address"`
	Metadata map[string]string `json:"metadata"`
}

// record is what one key holds.
type record struct {
	Node  Node   `json:"node"`
	TTLMs uint64 `json:"ttl_ms"`
}

// Open binds to the bucket, creating it when this program is the first to use it. The
// settings are those of a bucket the Rust side creates: one value per key, keys nobody
// rewrote for an hour swept.
func Open(js nats.JetStreamContext) (nats.KeyValue, error) {
	kv, err := js.KeyValue(Bucket)
	if errors.Is(err, nats.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(&nats.KeyValueConfig{
			Bucket:      Bucket,
			Description: "service discovery: one key per node",
			History:     1,
			TTL:         time.Hour,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("opening the registry bucket %s: %w", Bucket, err)
	}
	return kv, nil
}

// Escape keeps A-Z a-z 0-9 - and _, and writes every other byte as =XX.
func Escape(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	return b.String()
}

// Key is the key of a node: "<service>.<id>", both escaped.
func Key(service, id string) string {
	return Escape(service) + "." + Escape(id)
}

// Register writes the node's key once. Call it again before the TTL runs out, or use Lease.
func Register(kv nats.KeyValue, node Node, ttl time.Duration) error {
	if ttl < time.Millisecond || ttl > MaxTTL {
		return fmt.Errorf("a TTL must be between 1ms and %v, not %v", MaxTTL, ttl)
	}
	if node.Metadata == nil {
		node.Metadata = map[string]string{}
	}
	value, err := json.Marshal(record{Node: node, TTLMs: uint64(ttl / time.Millisecond)})
	if err != nil {
		return err
	}
	_, err = kv.Put(Key(node.Service, node.ID), value)
	return err
}

// Lease keeps a node registered: it writes the key every third of the TTL until Stop.
type Lease struct {
	kv   nats.KeyValue
	node Node
	stop chan struct{}
	done sync.WaitGroup
}

// Start registers the node and starts its heartbeat.
func Start(kv nats.KeyValue, node Node, ttl time.Duration, logf func(string, ...interface{})) (*Lease, error) {
	if err := Register(kv, node, ttl); err != nil {
		return nil, err
	}
	l := &Lease{kv: kv, node: node, stop: make(chan struct{})}
	l.done.Add(1)
	go func() {
		defer l.done.Done()
		// One missed beat is survived with a third of the TTL to spare.
		tick := time.NewTicker(ttl / 3)
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
				if err := Register(kv, node, ttl); err != nil {
					logf("heartbeat of %s failed: %v", node.ID, err)
				}
			}
		}
	}()
	return l, nil
}

// Stop ends the heartbeat and deletes the key: watchers hear at once that the node left.
// The heartbeat has stopped before the delete, so no beat in flight can list it again.
func (l *Lease) Stop() error {
	close(l.stop)
	l.done.Wait()
	return l.kv.Delete(Key(l.node.Service, l.node.ID))
}

// Nodes lists the live nodes of a service, sorted by id as every Rust client sorts them,
// so a Go client takes its turns in the same order. Entries that are not a node of this
// service (bad JSON, a key that does not match its value) are skipped, as the Rust
// readers skip them: one bad writer must not blind every client.
//
// The keys come from the stream's info and each is read on its own, as the Rust readers
// do. A watch's first replay is no listing: it ends where a message says nothing is
// pending, and while heartbeats rewrite keys a message can say so too early. With two of
// three keys rewritten every 2 ms (nats-server 2.9), about one replay in twenty held a key
// twice, most of those without another key; no listing read this way was wrong.
func Nodes(js nats.JetStreamContext, kv nats.KeyValue, service string) ([]Node, error) {
	prefix := "$KV." + Bucket + "."
	info, err := js.StreamInfo("KV_"+Bucket, &nats.StreamInfoRequest{SubjectsFilter: prefix + Escape(service) + ".*"})
	if err != nil {
		return nil, fmt.Errorf("listing the keys of %s: %w", service, err)
	}
	var nodes []Node
	for subject := range info.State.Subjects {
		entry, err := kv.Get(strings.TrimPrefix(subject, prefix))
		if errors.Is(err, nats.ErrKeyNotFound) {
			// A deleted key keeps its subject, holding the delete marker.
			continue
		}
		if err != nil {
			return nil, err
		}
		if node, left, ok := read(service, entry); ok && left > 0 {
			nodes = append(nodes, node)
		}
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].ID < nodes[j].ID })
	return nodes, nil
}

// read is a node and what is left of its TTL, or ok=false for an entry that is not one.
func read(service string, entry nats.KeyValueEntry) (node Node, left time.Duration, ok bool) {
	var r record
	if err := json.Unmarshal(entry.Value(), &r); err != nil {
		return Node{}, 0, false
	}
	if r.Node.Service != service || entry.Key() != Key(service, r.Node.ID) {
		return Node{}, 0, false
	}
	ttl := time.Duration(r.TTLMs) * time.Millisecond
	return r.Node, ttl - time.Since(entry.Created()), true
}
