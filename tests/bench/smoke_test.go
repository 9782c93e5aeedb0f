// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/harness"
)

// pepsalBin is built once by TestMain when running as root, not under -short.
var pepsalBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 || testing.Short() {
		os.Exit(m.Run()) // the smoke test skips itself
	}
	os.Exit(harness.RunWithBinary(m, &pepsalBin))
}

// TestSmoke runs a tiny benchmark end to end on plain veth, both topologies,
// without and with pepsal (splice; the two-PEP bed with its default warm
// paths under a key the bench makes), and checks what moved, never how fast.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end in network namespaces: runs in make test, not under -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and BPF")
	}
	cfg := Config{Pepsal: pepsalBin, Relays: []string{"splice"}, Runs: 1, Timeout: 30 * time.Second, ServerCC: "cubic", WarmPaths: true}
	removeKey, err := cfg.MakePeerKey()
	if err != nil {
		t.Fatal(err)
	}
	defer removeKey()
	transfers := []Transfer{{"1 MB", 1e6, false}, {"1 MB up", 1e6, true}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, topo := range []Topo{Plain, TwoPEP} {
		t.Run(string(topo), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := RunSpec(ctx, cfg, Spec{Topo: topo, Transfers: transfers}, "pbt", log)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Rows) != 2 {
				t.Fatalf("%d rows, want 2", len(res.Rows))
			}
			for _, row := range res.Rows {
				if row.Unavailable != "" {
					t.Fatalf("%s unavailable: %s", row.Mode.Name, row.Unavailable)
				}
				for _, tr := range transfers {
					if errs := row.Errors[tr.Label]; len(errs) > 0 {
						t.Errorf("%s %s: %v", row.Mode.Name, tr.Label, errs)
					}
					if n := len(row.Samples[tr.Label]); n != 1 {
						t.Errorf("%s %s: %d samples, want 1", row.Mode.Name, tr.Label, n)
					}
				}
				if row.Bytes != 2e6 || row.Attempted != 2 {
					t.Errorf("%s: moved %d bytes in %d transfers, want 2000000 in 2", row.Mode.Name, row.Bytes, row.Attempted)
				}
				if row.Mode.Proxied() {
					wantSites := map[Topo]int{Plain: 1, TwoPEP: 2}[topo]
					if len(row.Split) != wantSites {
						t.Errorf("%s: status of %d sites, want %d", row.Mode.Name, len(row.Split), wantSites)
					}
					for site, n := range row.Split {
						if n < 2 {
							t.Errorf("%s at the %s split %d connections, want >= 2", row.Mode.Name, site, n)
						}
					}
					// The default warm paths carried the transfers.
					if warm := strings.HasSuffix(row.Mode.Name, warmLabel); warm != (topo == TwoPEP) || (warm && row.Warm < 2) {
						t.Errorf("%s: %d of %d connections rode a warm path", row.Mode.Name, row.Warm, row.Connections)
					}
				}
			}
			if md := res.Table().Markdown(); testing.Verbose() {
				t.Log("\n" + md)
			}
		})
	}
}
