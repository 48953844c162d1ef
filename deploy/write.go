package deploy

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Write prints the plan as "text" (for people: per node, every process with its
// environment and a copy-pastable command line) or "json" (for machines).
func (p *Plan) Write(w io.Writer, format string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(p); err != nil {
			return fmt.Errorf("writing plan: %w", err)
		}
		return nil
	case "text", "":
		_, err := io.WriteString(w, p.text())
		if err != nil {
			return fmt.Errorf("writing plan: %w", err)
		}
		return nil
	default:
		return fmt.Errorf("plan format %q: want text or json", format)
	}
}

func (p *Plan) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: %s\n# %s\n", p.Shape, p.Model, p.Summary)
	common := p.commonEnv()
	if len(common) > 0 {
		fmt.Fprintf(&b, "# every engine also gets: %s\n", strings.Join(sortedEnv(common), " "))
	}
	for _, r := range p.Replicas {
		n := p.Nodes[r.HeadRank]
		fmt.Fprintf(&b, "\nreplica %d: router %s on node %d (%s)\n", r.Index, r.RouterURL, n.Rank, n.Host)
		for _, g := range []struct {
			name string
			urls []string
		}{{"workers", r.Workers}, {"prefill", r.Prefill}, {"decode", r.Decode}} {
			if len(g.urls) > 0 {
				fmt.Fprintf(&b, "  %s (%d): %s\n", g.name, len(g.urls), strings.Join(g.urls, " "))
			}
		}
	}
	for _, n := range p.Nodes {
		fmt.Fprintf(&b, "\nnode %d %s: %s\n", n.Rank, n.Host, n.Label)
		for _, f := range n.Files {
			fmt.Fprintf(&b, "  file %s: %s", f.Path, f.Content)
		}
		for _, proc := range n.Processes {
			where := proc.URL
			if where == "" {
				where = "no HTTP"
			}
			fmt.Fprintf(&b, "  %s [%s] %s\n", proc.Name, proc.Role, where)
			var own []string
			for _, kv := range sortedEnv(proc.Env) {
				k, v, _ := strings.Cut(kv, "=")
				if cv, ok := common[k]; !ok || cv != v {
					own = append(own, shellQuote(k+"="+v))
				}
			}
			if len(own) > 0 {
				fmt.Fprintf(&b, "    env %s\n", strings.Join(own, " "))
			}
			fmt.Fprintf(&b, "    %s\n", shellJoin(proc.Argv))
		}
	}
	return b.String()
}

// perProcessEnv are always printed with their process: they are what differs.
var perProcessEnv = map[string]bool{
	"CUDA_VISIBLE_DEVICES": true, "VLLM_RPC_BASE_PATH": true,
	"VLLM_NIXL_SIDE_CHANNEL_HOST": true, "VLLM_NIXL_SIDE_CHANNEL_PORT": true,
}

// commonEnv is the environment every engine shares, printed once at the top.
func (p *Plan) commonEnv() map[string]string {
	var common map[string]string
	for _, n := range p.Nodes {
		for _, proc := range n.Processes {
			if proc.Role == RoleRouter || proc.Role == RoleKVStore {
				continue
			}
			if common == nil {
				common = map[string]string{}
				for k, v := range proc.Env {
					if !perProcessEnv[k] {
						common[k] = v
					}
				}
				continue
			}
			for k, v := range common {
				if proc.Env[k] != v {
					delete(common, k)
				}
			}
		}
	}
	return common
}

// shellJoin quotes argv so the line can be pasted into a POSIX shell.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@%+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
