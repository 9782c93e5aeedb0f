// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestGeneratePage(t *testing.T) {
	p := GeneratePage()
	if n := len(p.Resources); n != 70 {
		t.Errorf("%d sub-resources, want 70", n)
	}
	if total := p.SubBytes() + pageHTML; total != 2_000_000 {
		t.Errorf("page is %d bytes, want 2000000", total)
	}
	perOrigin := make([]int, pageOrigins)
	paths := map[string]bool{}
	var sizes []int
	for _, r := range p.Resources {
		perOrigin[r.Origin]++
		if paths[r.Path] {
			t.Errorf("path %s twice", r.Path)
		}
		paths[r.Path] = true
		sizes = append(sizes, r.Size)
		if b := p.Body(r); len(b) != r.Size {
			t.Errorf("%s: body %d bytes, want %d", r.Path, len(b), r.Size)
		}
	}
	for i, n := range perOrigin {
		if n < 5 {
			t.Errorf("origin %d serves %d resources: want every origin to serve several (%v)", i, n, perOrigin)
		}
	}
	// A real page's spread: a few large files, most small.
	slices.Sort(sizes)
	if med, top := sizes[len(sizes)/2], sizes[len(sizes)-1]; med > 20_000 || top < 100_000 {
		t.Errorf("median %d bytes, largest %d: want a median under 20 kB and a file over 100 kB", med, top)
	}
	if q := GeneratePage(); !slices.Equal(q.Resources, p.Resources) || !bytes.Equal(q.Body(q.Resources[5]), p.Body(p.Resources[5])) {
		t.Error("two pages differ: the generator must be deterministic")
	}
}

func TestPageBMP(t *testing.T) {
	for _, size := range []int{200, 250, 4096, 123457} {
		b := bmp(newTestRand(), size)
		le := binary.LittleEndian
		w, h := int(le.Uint32(b[18:])), int(le.Uint32(b[22:]))
		stride := (w*3 + 3) &^ 3
		if string(b[:2]) != "BM" || int(le.Uint32(b[2:])) != size || int(le.Uint32(b[10:]))+h*stride != size || h < 1 {
			t.Errorf("size %d: not a BMP of that size (w %d h %d off %d)", size, w, h, le.Uint32(b[10:]))
		}
	}
}

func TestPageHTML(t *testing.T) {
	p := GeneratePage()
	origins := []string{"https://10.77.2.2", "https://10.77.2.3", "https://10.77.2.4"}
	html, err := p.HTML(origins)
	if err != nil {
		t.Fatal(err)
	}
	if len(html) != pageHTML {
		t.Errorf("document is %d bytes, want %d", len(html), pageHTML)
	}
	s := string(html)
	for _, r := range p.Resources {
		if u := origins[r.Origin] + r.Path; strings.Count(s, `"`+u+`"`) != 1 {
			t.Errorf("%s not referenced once", u)
		}
	}
	if strings.Contains(s, "http://") {
		t.Error("an HTTPS page references a clear-text URL")
	}
	if !strings.Contains(s, "addEventListener('load'") || !strings.Contains(s, `id="pepsal-timing"`) {
		t.Error("no timing script")
	}
	if _, err := p.HTML(origins[:2]); err == nil {
		t.Error("two origins accepted")
	}
	conf := NginxConf("/d", []string{"10.77.2.2", "10.77.2.3", "10.77.2.4"})
	if strings.Count(conf, "server {") != 3 || strings.Count(conf, "ssl http2;") != 3 || !strings.Contains(conf, "Timing-Allow-Origin") {
		t.Errorf("nginx configuration lacks a server block per origin:\n%s", conf)
	}
}

func TestOriginAddrs(t *testing.T) {
	if got := originAddrs("10.78.2.2"); !slices.Equal(got, []string{"10.78.2.2", "10.78.2.3", "10.78.2.4"}) {
		t.Errorf("originAddrs = %v", got)
	}
}

func TestParseTiming(t *testing.T) {
	dom := "<html><head></head><body>\n<pre id=\"pepsal-timing\">PEPSAL-TIMING ttfb=1223 load=9910 resources=70 bytes=1970000 protocols=http/1.1</pre>\n<img src=x></body></html>"
	tm, err := ParseTiming(dom)
	if err != nil {
		t.Fatal(err)
	}
	want := Timing{TTFB: 1223 * time.Millisecond, Load: 9910 * time.Millisecond, Resources: 70, Bytes: 1970000, Protocols: []string{"http/1.1"}}
	if tm.TTFB != want.TTFB || tm.Load != want.Load || tm.Resources != want.Resources || tm.Bytes != want.Bytes || !slices.Equal(tm.Protocols, want.Protocols) {
		t.Errorf("got %+v, want %+v", tm, want)
	}
	p := GeneratePage()
	ok := Timing{Load: time.Second, Resources: len(p.Resources), Bytes: p.SubBytes(), Protocols: []string{"h2"}}
	if err := ok.Check(p, "h2"); err != nil {
		t.Errorf("complete load rejected: %v", err)
	}
	short := ok
	short.Bytes--
	mixed := ok
	mixed.Protocols = []string{"h2", "http/1.1"}
	for name, bad := range map[string]Timing{"short": short, "mixed": mixed} {
		if bad.Check(p, "h2") == nil {
			t.Errorf("%s load accepted", name)
		}
	}
	if tm, err := ParseTiming("PEPSAL-TIMING ttfb=1.5 load=20.25 resources=1 bytes=2 protocols=h2,http/1.1"); err != nil || tm.Load != 20250*time.Microsecond || len(tm.Protocols) != 2 {
		t.Errorf("fractional ms: %+v, %v", tm, err)
	}
	for name, in := range map[string]string{
		"no line":   "<pre id=\"pepsal-timing\">loading</pre>",
		"missing":   "PEPSAL-TIMING ttfb=1 load=2 resources=3 protocols=h2",
		"negative":  "PEPSAL-TIMING ttfb=-1 load=2 resources=3 bytes=4 protocols=h2",
		"NaN":       "PEPSAL-TIMING ttfb=1 load=NaN resources=3 bytes=4 protocols=h2",
		"not a num": "PEPSAL-TIMING ttfb=1 load=2 resources=x bytes=4 protocols=h2",
		"unknown":   "PEPSAL-TIMING ttfb=1 load=2 resources=3 bytes=4 protocols=h2 foo=1",
		"twice":     "PEPSAL-TIMING ttfb=1 ttfb=1 load=2 resources=3 bytes=4 protocols=h2",
		"no equals": "PEPSAL-TIMING ttfb=1 load=2 resources=3 bytes=4 protocols",
		"backwards": "PEPSAL-TIMING ttfb=5 load=2 resources=3 bytes=4 protocols=h2",
	} {
		if _, err := ParseTiming(in); err == nil {
			t.Errorf("%s: %q accepted", name, in)
		}
	}
}

func TestWebTable(t *testing.T) {
	tab := &WebTable{Profile: "geo", Runs: 3, Timeout: 90 * time.Second}
	for _, m := range WebModes("splice", true) {
		r := &WebRow{Mode: m, Load: map[string][]float64{}, TTFB: map[string][]float64{}, Errors: map[string][]string{}}
		tab.Rows = append(tab.Rows, r)
	}
	tab.Rows[0].Load["HTTP/1.1"] = []float64{10, 9, 11}
	tab.Rows[1].Load["HTTP/1.1"] = []float64{5, 4, 6}
	tab.Rows[3].Unavailable = "build failed"
	md := tab.Table().Markdown()
	for _, want := range []string{"| pepsal splice, gateway", "5.00 s x2.00", "PEPsal 2.0.2, gateway unavailable: build failed", "median of 3 loads"} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
}

func newTestRand() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }
