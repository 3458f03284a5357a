// Command nats-client finds the transport example's service by the NATS service protocol
// and calls it with nats.go: who is there ($SRV.PING), which endpoints on which subjects
// ($SRV.INFO), then calls on the subject INFO named, a refusal read from the error
// headers, and the counts the instances keep ($SRV.STATS).
//
//	nats-client -nats nats://127.0.0.1:4222 -calls 20
//
// It reads the protocol's v1 dialect (what the Rust instances and current NATS libraries
// answer); Debian's nats.go has no client side for it, so the JSON types are written here.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"microkit/interop/greeterpb"
)

const service = "transport-greeter"

// The parts of the v1 answers this client reads.
type (
	ping struct {
		Type     string            `json:"type"`
		Name     string            `json:"name"`
		ID       string            `json:"id"`
		Version  string            `json:"version"`
		Metadata map[string]string `json:"metadata"`
	}
	info struct {
		Type      string `json:"type"`
		Endpoints []struct {
			Name       string `json:"name"`
			Subject    string `json:"subject"`
			QueueGroup string `json:"queue_group"`
		} `json:"endpoints"`
	}
	stats struct {
		Type      string `json:"type"`
		Endpoints []struct {
			Name        string `json:"name"`
			NumRequests int    `json:"num_requests"`
			NumErrors   int    `json:"num_errors"`
		} `json:"endpoints"`
	}
)

func main() {
	url := flag.String("nats", envOr("NATS_URL", nats.DefaultURL), "the NATS server")
	calls := flag.Int("calls", 4, "how many calls to make")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("nats-client: ")
	if err := run(*url, *calls); err != nil {
		log.Fatal(err)
	}
}

func run(url string, calls int) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", url, err)
	}
	defer nc.Close()

	var pings []ping
	if err := gather(nc, "$SRV.PING."+service, "io.nats.micro.v1.ping_response", &pings); err != nil {
		return err
	}
	if len(pings) == 0 {
		return fmt.Errorf("no instance of %s answered $SRV.PING.%s", service, service)
	}
	var found []string
	for _, p := range pings {
		found = append(found, fmt.Sprintf("found %s %s on node %s", p.Name, p.Version, p.Metadata["node"]))
	}
	sort.Strings(found)
	fmt.Println(strings.Join(found, "\n"))

	var infos []info
	if err := gather(nc, "$SRV.INFO."+service, "io.nats.micro.v1.info_response", &infos); err != nil {
		return err
	}
	endpoints := map[string]bool{}
	subject := ""
	for _, i := range infos {
		for _, e := range i.Endpoints {
			endpoints[fmt.Sprintf("endpoint %s on %s, queue group %s", e.Name, e.Subject, e.QueueGroup)] = true
			if e.Name == "SayHello" {
				subject = e.Subject
			}
		}
	}
	for _, line := range sorted(endpoints) {
		fmt.Println(line)
	}
	if subject == "" {
		return fmt.Errorf("no instance lists a SayHello endpoint")
	}

	// The queue group is the server's business: the client names only the subject.
	byNode := map[string]int{}
	for n := 0; n < calls; n++ {
		reply, refused, err := call(nc, subject, "gopher")
		if err != nil {
			return fmt.Errorf("call %d: %w", n+1, err)
		}
		if refused != "" {
			return fmt.Errorf("call %d refused: %s", n+1, refused)
		}
		byNode[reply.GetNode()]++
	}
	fmt.Printf("%d calls on %s, answered by %d instances\n", calls, subject, len(byNode))

	_, refused, err := call(nc, subject, "")
	if err != nil {
		return err
	}
	fmt.Printf("an empty name: refused: %s\n", refused)

	var counted []stats
	if err := gather(nc, "$SRV.STATS."+service, "io.nats.micro.v1.stats_response", &counted); err != nil {
		return err
	}
	requests, errors := 0, 0
	for _, s := range counted {
		for _, e := range s.Endpoints {
			if e.Name == "SayHello" {
				requests += e.NumRequests
				errors += e.NumErrors
			}
		}
	}
	fmt.Printf("stats, summed over %d instances: SayHello %d requests, %d errors\n", len(counted), requests, errors)
	return nil
}

// call sends one HelloRequest: the reply, or the refusal the error headers carry.
func call(nc *nats.Conn, subject, name string) (*greeterpb.HelloReply, string, error) {
	payload, err := proto.Marshal(&greeterpb.HelloRequest{Name: name})
	if err != nil {
		return nil, "", err
	}
	msg, err := nc.Request(subject, payload, 5*time.Second)
	if err != nil {
		return nil, "", err
	}
	// NATS header names are case-sensitive: these are the protocol's spellings.
	if description := msg.Header.Get("Nats-Service-Error"); description != "" {
		return nil, msg.Header.Get("Nats-Service-Error-Code") + " " + description, nil
	}
	var reply greeterpb.HelloReply
	if err := proto.Unmarshal(msg.Data, &reply); err != nil {
		return nil, "", fmt.Errorf("not a HelloReply: %w", err)
	}
	return &reply, "", nil
}

// gather is the protocol's scatter-gather: one request on a discovery subject, and every
// answer until none came for 100ms. Each answer must be of the given v1 type.
func gather(nc *nats.Conn, subject, kind string, into interface{}) error {
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return err
	}
	var answers []json.RawMessage
	for {
		msg, err := sub.NextMsg(100 * time.Millisecond)
		if err == nats.ErrTimeout {
			break
		}
		if err != nil {
			return err
		}
		var typed struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(msg.Data, &typed); err != nil || typed.Type != kind {
			return fmt.Errorf("%s: an answer that is not %s: %s", subject, kind, msg.Data)
		}
		answers = append(answers, msg.Data)
	}
	all, _ := json.Marshal(answers)
	return json.Unmarshal(all, into)
}

func sorted(set map[string]bool) []string {
	var lines []string
	for line := range set {
		lines = append(lines, line)
	}
	sort.Strings(lines)
	return lines
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
