package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPlanMain(t *testing.T) {
	example := filepath.Join("..", "examples", "disaggregated_6node.toml")
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[inference]\nmodel = \"m\"\nfoo = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		args      []string
		code      int
		stdout    string
		stderr    string
		checkJSON bool
	}{
		{"text with nodes after the file", []string{example, "--nodes", "a,b,c,d,e,f"}, 0, "replica 0: router http://a:8000/v1 on node 0 (a)", "", false},
		{"json, flags first", []string{"--format", "json", example}, 0, `"router_url": "http://node1:8000/v1"`, "", true},
		{"bind node", []string{example, "--bind", "node", "--nodes", "a,b,c,d,e,f"}, 0, "--host f --port 8203", "", false},
		{"unknown format", []string{example, "--format", "yaml"}, 1, "", `plan format "yaml"`, false},
		{"too few nodes", []string{example, "--nodes", "a,b"}, 1, "", "needs 6 inference nodes", false},
		{"bad config", []string{bad}, 1, "", `bad.toml:3: unknown key "inference.foo"`, false},
		{"no file", nil, 2, "", "usage: switchyard plan", false},
		{"unknown flag", []string{example, "--nope"}, 2, "", "flag provided but not defined: -nope", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := PlanMain(tc.args, &stdout, &stderr)
			if code != tc.code || !strings.Contains(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("code %d stdout %.300q stderr %q", code, stdout.String(), stderr.String())
			}
			if tc.checkJSON {
				var p Plan
				if err := json.Unmarshal(stdout.Bytes(), &p); err != nil || len(p.Nodes) != 6 {
					t.Errorf("json: %v", err)
				}
			}
		})
	}
}

func TestLaunchMain(t *testing.T) {
	ports := freePorts(t, 2)
	path := filepath.Join(t.TempDir(), "single.toml")
	toml := fmt.Sprintf("[inference]\nmodel = \"m\"\n[inference.deployment]\ngpus_per_node = 1\nrouter_port = %d\nbackend_port = %d\n", ports[0], ports[1])
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	router := &fakeRouter{}
	code := make(chan int, 1)
	go func() {
		code <- LaunchMain(ctx, []string{path, "--engine-cmd", fakeEngine, "--nodes", "127.0.0.1", "--stop-grace", "2s"}, &stdout, &stderr, router.start)
	}()
	out := completion(t, ports[0], time.Now().Add(20*time.Second))
	if out["served_by"] != strconv.Itoa(ports[1]) {
		t.Errorf("response %v", out)
	}
	cancel()
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("exit code %d after cancel; stderr:\n%s", c, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("LaunchMain did not return after cancel")
	}

	var errOut bytes.Buffer
	if c := LaunchMain(context.Background(), []string{path, "--max-restarts", "x"}, &bytes.Buffer{}, &errOut, router.start); c != 2 {
		t.Errorf("bad flag: exit %d", c)
	}
	if c := LaunchMain(context.Background(), []string{filepath.Join(t.TempDir(), "none.toml")}, &bytes.Buffer{}, &errOut, router.start); c != 1 ||
		!strings.Contains(errOut.String(), "reading deployment config") {
		t.Errorf("missing file: exit %d, %s", c, errOut.String())
	}
}

func TestEngineCommand(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"sim", []string{self, "sim"}},
		{"switchyard sim", []string{"switchyard", "sim"}},
		{"  /opt/vllm/bin/vllm  ", []string{"/opt/vllm/bin/vllm"}},
	}
	for _, tc := range tests {
		got, err := engineCommand(tc.in)
		if err != nil || strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("%q: got %v %v, want %v", tc.in, got, err, tc.want)
		}
	}
}
