// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
)

// The synthetic page is shaped like the median desktop page of the HTTP
// Archive (2024): about 2 MB and 70 requests, most bytes in a few large
// images and scripts, most requests small. Sizes are transfer sizes (nginx
// sends them as they are, uncompressed; the content is random, like the
// compressed images and minified, gzipped scripts it stands for).
const (
	pageSeed    = 20241101 // fixed: every run, every machine, the same page
	pageHTML    = 30_000   // the document itself
	pageOrigins = 3
)

// pageKinds: how many sub-resources of each kind and their total size.
// Fonts and other media count as images.
var pageKinds = []struct {
	kind  string
	count int
	total int
}{
	{"css", 7, 80_000},
	{"js", 22, 620_000},
	{"img", 41, 1_270_000},
}

// originShare: first party, a CDN, third parties (analytics, ads, widgets).
var originShare = [pageOrigins]float64{0.45, 0.35, 0.20}

// PageResource is one sub-resource of the page.
type PageResource struct {
	Path   string // "/r/img07.bmp"
	Kind   string // css, js, img
	Size   int
	Origin int // index into the page's origins
	Async  bool
}

// Page is the synthetic web page: the document (rendered per origin set and
// scheme by HTML) and its sub-resources.
type Page struct {
	Resources []PageResource
}

// GeneratePage builds the page from the fixed seed: the same every call.
func GeneratePage() *Page {
	r := rand.New(rand.NewPCG(pageSeed, 1))
	p := &Page{}
	for _, k := range pageKinds {
		sizes := spread(r, k.count, k.total, minSize(k.kind))
		for i, s := range sizes {
			res := PageResource{
				Path: fmt.Sprintf("/r/%s%02d.%s", k.kind, i, ext(k.kind)),
				Kind: k.kind,
				Size: s,
			}
			res.Origin = pickOrigin(r.Float64())
			// A few render-blocking scripts in the head, the rest async,
			// as pages do for analytics and widgets.
			res.Async = k.kind == "js" && i >= 3
			p.Resources = append(p.Resources, res)
		}
	}
	return p
}

func pickOrigin(u float64) int {
	for i, s := range originShare {
		if u < s {
			return i
		}
		u -= s
	}
	return pageOrigins - 1
}

func ext(kind string) string {
	if kind == "img" {
		return "bmp"
	}
	return kind
}

func minSize(kind string) int {
	if kind == "img" {
		return 200 // above a BMP header
	}
	return 300
}

// spread draws n log-normal sizes (a long tail: a few large, many small),
// scales them to total exactly, none below min.
func spread(r *rand.Rand, n, total, min int) []int {
	w := make([]float64, n)
	sum := 0.0
	for i := range w {
		w[i] = math.Exp(1.4 * r.NormFloat64())
		sum += w[i]
	}
	sizes := make([]int, n)
	got, big := 0, 0
	for i := range w {
		sizes[i] = max(min, int(float64(total-n*min)*w[i]/sum)+min)
		got += sizes[i]
		if sizes[i] > sizes[big] {
			big = i
		}
	}
	sizes[big] += total - got // rounding: the largest absorbs it
	return sizes
}

// SubBytes is the size of all sub-resources.
func (p *Page) SubBytes() int64 {
	var n int64
	for _, r := range p.Resources {
		n += int64(r.Size)
	}
	return n
}

// Body is the content of a sub-resource: valid CSS, JavaScript or BMP of
// exactly r.Size bytes, random (seeded by its path) so that nothing on the
// way can compress it.
func (p *Page) Body(r PageResource) []byte {
	var seed uint64
	for _, c := range r.Path {
		seed = seed*131 + uint64(c)
	}
	rnd := rand.New(rand.NewPCG(pageSeed, seed))
	switch r.Kind {
	case "img":
		return bmp(rnd, r.Size)
	case "css":
		name := strings.TrimSuffix(strings.TrimPrefix(r.Path, "/r/"), ".css")
		return padded(rnd, ".p-"+name+"{color:#345;margin:0}\n/*", "*/\n", r.Size)
	default:
		name := strings.TrimSuffix(strings.TrimPrefix(r.Path, "/r/"), ".js")
		return padded(rnd, "var pepsal_"+name+"='", "';\n", r.Size)
	}
}

const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func padded(r *rand.Rand, head, tail string, size int) []byte {
	b := make([]byte, 0, size)
	b = append(b, head...)
	for len(b) < size-len(tail) {
		b = append(b, letters[r.IntN(len(letters))])
	}
	return append(b, tail...)
}

// bmp is a 24-bit BMP of exactly size bytes: 64 random pixels a row, the
// remainder as a gap between header and pixels (bfOffBits allows it).
func bmp(r *rand.Rand, size int) []byte {
	const header = 54
	width := 64
	stride := width * 3
	if size-header < stride {
		width, stride = 1, 4
	}
	height := (size - header) / stride
	off := size - height*stride
	b := make([]byte, size)
	copy(b, "BM")
	le := binary.LittleEndian
	le.PutUint32(b[2:], uint32(size))
	le.PutUint32(b[10:], uint32(off))
	le.PutUint32(b[14:], 40)
	le.PutUint32(b[18:], uint32(width))
	le.PutUint32(b[22:], uint32(height))
	le.PutUint16(b[26:], 1)
	le.PutUint16(b[28:], 24)
	le.PutUint32(b[34:], uint32(height*stride))
	for i := off; i < size; i += 8 {
		var w [8]byte
		le.PutUint64(w[:], r.Uint64())
		copy(b[i:], w[:])
	}
	return b
}

// timingScript writes the browser's own Navigation and Resource Timing into
// the document once the load event fires; the harness reads it from the
// dumped DOM (ParseTiming). Bytes count decoded bodies, which the servers'
// Timing-Allow-Origin header exposes across origins.
const timingScript = `<script>addEventListener('load',function(){` +
	`var t=performance.timing,e=performance.getEntriesByType('resource'),n=0,b=0,p={};` +
	`var v=performance.getEntriesByType('navigation');if(v.length)p[v[0].nextHopProtocol||'?']=1;` +
	`for(var i=0;i<e.length;i++){if(e[i].responseEnd>0&&e[i].decodedBodySize>0){n++;b+=e[i].decodedBodySize}p[e[i].nextHopProtocol||'?']=1}` +
	`document.getElementById('pepsal-timing').textContent='PEPSAL-TIMING ttfb='+(t.responseStart-t.navigationStart)+` +
	`' load='+(t.loadEventStart-t.navigationStart)+' resources='+n+' bytes='+b+' protocols='+Object.keys(p).sort().join(',')})</script>`

// HTML renders the document with sub-resources at origins (base URLs such as
// "http://10.77.2.2"), padded with text to exactly pageHTML bytes.
func (p *Page) HTML(origins []string) ([]byte, error) {
	if len(origins) != pageOrigins {
		return nil, fmt.Errorf("page: want %d origins, got %d", pageOrigins, len(origins))
	}
	var head, body strings.Builder
	head.WriteString("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>pepsal page-load benchmark</title>\n<link rel=\"icon\" href=\"data:,\">\n")
	body.WriteString("</head><body>\n<pre id=\"pepsal-timing\">loading</pre>\n")
	for _, r := range p.Resources {
		u := origins[r.Origin] + r.Path
		switch {
		case r.Kind == "css":
			fmt.Fprintf(&head, "<link rel=\"stylesheet\" href=\"%s\">\n", u)
		case r.Kind == "js" && !r.Async:
			fmt.Fprintf(&head, "<script src=\"%s\"></script>\n", u)
		case r.Kind == "js":
			fmt.Fprintf(&body, "<script async src=\"%s\"></script>\n", u)
		default:
			fmt.Fprintf(&body, "<img src=\"%s\" alt=\"\">\n", u)
		}
	}
	const tail = "</body></html>\n"
	doc := head.String() + body.String() + timingScript + "\n"
	fill := pageHTML - len(doc) - len(tail) - len("<p></p>\n")
	if fill < 0 {
		return nil, fmt.Errorf("page: document without text is %d bytes, over %d", len(doc)+len(tail), pageHTML)
	}
	r := rand.New(rand.NewPCG(pageSeed, 2))
	var text strings.Builder
	for text.Len() < fill {
		w := 2 + r.IntN(9)
		for range w {
			text.WriteByte(letters[r.IntN(26)])
		}
		text.WriteByte(' ')
	}
	return []byte(doc + "<p>" + text.String()[:fill] + "</p>\n" + tail), nil
}
