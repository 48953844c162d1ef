package deploy

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// parseInterspersed parses flags that may come before or after positional arguments
// ("plan config.toml --nodes a,b"), which the flag package alone stops at.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// PlanMain is `switchyard plan CONFIG [--nodes h1,h2,…] [--format text|json]
// [--bind ADDR|node]`: it prints every process per node. It returns the exit code.
func PlanMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	nodes := fs.String("nodes", "", "comma-separated hosts in job order (default: placeholders node1…nodeN)")
	format := fs.String("format", "text", "output format: text or json")
	bind := fs.String("bind", "", `listen address of engines and routers: empty for 0.0.0.0, "node" for each node's host`)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: switchyard plan CONFIG.toml [--nodes h1,h2,...] [--format text|json] [--bind ADDR|node]")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fs.Usage()
		return 2
	}
	cfg, err := Load(pos[0])
	if err != nil {
		fmt.Fprintln(stderr, "switchyard plan:", err)
		return 1
	}
	plan, err := BuildPlan(cfg, splitList(*nodes), PlanOptions{BindHost: *bind})
	if err != nil {
		fmt.Fprintln(stderr, "switchyard plan:", err)
		return 1
	}
	if err := plan.Write(stdout, *format); err != nil {
		fmt.Fprintln(stderr, "switchyard plan:", err)
		return 1
	}
	return 0
}
