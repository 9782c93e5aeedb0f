// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/harness"
	"github.com/pepsal/pepsal/tests/kmatrix"
	"github.com/pepsal/pepsal/tests/testbed"
)

// Real programs (nginx, curl, h2load, sshd, scp, socat) through pepsal: the
// Debian packages of the Makefile's APT_PKGS, which `make test` installs.

// realTool is the absolute path of a program; a missing one fails the test
// (never skips it): the suite is meant to run them.
func realTool(t *testing.T, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	// root's PATH may lack the sbin directories (sshd, nginx live there).
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("%s not found: install the Debian package %s (make test does)", name, pkg)
	return ""
}

// realServer is a server program running in a namespace for one test.
type realServer struct {
	*harness.Process
	name string
}

// startRealServer runs name in ns in its own process group, which is killed
// at cleanup (also when the test fails), workers and children included, and
// also if the test binary dies without its cleanups.
func startRealServer(t *testing.T, ns *testbed.NS, name string, args ...string) *realServer {
	t.Helper()
	p, err := harness.Launch(ns, harness.Options{OwnGroup: true, DieWithParent: true}, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	s := &realServer{p, filepath.Base(name)}
	t.Cleanup(func() {
		s.Stop(syscall.SIGTERM, 5*time.Second)
		if t.Failed() {
			t.Logf("%s output:\n%s", s.name, s.Output())
		}
	})
	return s
}

// waitListening waits until every address accepts connections inside ns.
func (s *realServer) waitListening(t *testing.T, ns *testbed.NS, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		var last error
		err := s.WaitReady(t.Context(), 15*time.Second, func() bool {
			c, err := dial(ns, a, time.Second)
			if err == nil {
				c.Close()
			}
			last = err
			return err == nil
		})
		if err != nil {
			t.Fatalf("%s not listening on %s: %v (%v)\n%s", s.name, a, err, last, s.Output())
		}
	}
}

// runClient runs a client program in ns with a deadline and returns its
// stdout; the error carries stderr.
func runClient(ns *testbed.NS, limit time.Duration, stdin io.Reader, name string, args ...string) ([]byte, error) {
	limit = kmatrix.Stretch(limit) // the programs' own speed is not what is tested
	cmd := ns.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	done := make(chan error, 1)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := harness.StartLocked(cmd, done); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(limit):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		err = fmt.Errorf("killed after %s", limit)
	}
	if err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w\nstderr: %s", filepath.Base(name), strings.Join(args, " "), err, errb.String())
	}
	return out.Bytes(), nil
}

// writeRandomFile writes n deterministic pseudo-random bytes and returns their SHA-256.
func writeRandomFile(t *testing.T, path string, n int64, seed uint64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("create %s: %v", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(newStream(seed), n)); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func checkFile(t *testing.T, what, path, want string) {
	t.Helper()
	got, err := fileSHA256(path)
	if err != nil {
		t.Errorf("%s: %v", what, err)
	} else if got != want {
		t.Errorf("%s: sha256 %s, want %s", what, got, want)
	}
}

// divertedSince asserts that pepsal diverted at least n more SYNs than before.
func (b *bed) divertedSince(before uint64, n uint64, what string) {
	b.t.Helper()
	if got := b.status().counter("syn_diverted") - before; got < n {
		b.t.Errorf("%s: syn_diverted grew by %d, want >= %d (connections not split)", what, got, n)
	}
}

// selfSignedCert writes a certificate for the server's two addresses, and
// its key, in dir. It is its own CA, so that curl can verify it.
func selfSignedCert(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pepsal test server"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP(testbed.ServerV4), net.ParseIP(testbed.ServerV6)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create certificate: %v", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("marshal key: %v", err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatalf("write certificate: %v", err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatalf("write key: %v", err)
	}
	return certPath, keyPath
}

const (
	nginxHTTP  = 8080
	nginxHTTPS = 8443
	// nginxHTTPSShort is HTTPS with nginxKeepalive: a TLS handshake per request.
	nginxHTTPSShort = 8444
	// nginxKeepalive requests per connection in clear: nginx then closes it,
	// so an HTTP/1.1 burst of n requests opens n/nginxKeepalive connections.
	// (h2load does not reconnect after an HTTP/2 GOAWAY: the TLS side keeps
	// nginx's default.)
	nginxKeepalive = 1
)

// nginx is an nginx serving dir/www, and storing PUTs under dir/store.
type nginx struct {
	dir, cert string
}

// startNginx runs nginx in the server namespace, HTTP/1.1 in clear and HTTPS
// with HTTP/2, on both server addresses; all its files are in a temp dir.
func startNginx(t *testing.T, b *bed) *nginx {
	t.Helper()
	bin := realTool(t, "nginx", "nginx")
	dir := t.TempDir()
	for _, d := range []string{"www", "store", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatalf("mkdir: %v", err)
		}
	}
	cert, key := selfSignedCert(t, dir)
	var clear, tls, tlsShort strings.Builder
	for _, host := range []string{testbed.ServerV4, "[" + testbed.ServerV6 + "]"} {
		fmt.Fprintf(&clear, "    listen %s:%d;\n", host, nginxHTTP)
		fmt.Fprintf(&tls, "    listen %s:%d ssl http2;\n", host, nginxHTTPS)
		fmt.Fprintf(&tlsShort, "    listen %s:%d ssl;\n", host, nginxHTTPSShort)
	}
	site := fmt.Sprintf(`    root %[1]s/www;
    location /up/ {
      root %[1]s/store;
      dav_methods PUT;
      create_full_put_path on;
    }
`, dir)
	// One process (no master and workers): Pdeathsig then covers all of
	// nginx if the test binary is killed.
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 1024; }
http {
  default_type application/octet-stream;
  log_format split '$remote_addr $request_method $uri $status $server_protocol';
  access_log %[1]s/access.log split;
  client_body_temp_path %[1]s/tmp/body;
  proxy_temp_path %[1]s/tmp/proxy;
  fastcgi_temp_path %[1]s/tmp/fastcgi;
  uwsgi_temp_path %[1]s/tmp/uwsgi;
  scgi_temp_path %[1]s/tmp/scgi;
  client_max_body_size 0;
  server {
%[2]s    keepalive_requests %[3]d;
%[6]s  }
  server {
%[4]s    ssl_certificate %[5]s;
    ssl_certificate_key %[7]s;
%[6]s  }
  server {
%[8]s    keepalive_requests %[3]d;
    ssl_certificate %[5]s;
    ssl_certificate_key %[7]s;
%[6]s  }
}
`, dir, clear.String(), nginxKeepalive, tls.String(), cert, site, key, tlsShort.String())
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatalf("write nginx.conf: %v", err)
	}
	// -e: the error log before the configuration is read stays in dir too.
	s := startRealServer(t, b.Server, bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath)
	var addrs []string
	for _, f := range families {
		addrs = append(addrs, hostPort(f.server, nginxHTTP), hostPort(f.server, nginxHTTPS), hostPort(f.server, nginxHTTPSShort))
	}
	s.waitListening(t, b.Server, addrs...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range []string{"error.log", "access.log"} {
				out, _ := os.ReadFile(filepath.Join(dir, l))
				if len(out) > 2000 {
					out = out[len(out)-2000:]
				}
				t.Logf("nginx %s (tail):\n%s", l, out)
			}
		}
	})
	return &nginx{dir: dir, cert: cert}
}

// accessLog returns, per remote address, the access log lines whose status is
// 2xx, and the other lines.
func (n *nginx) accessLog(t *testing.T) (ok map[string]int, others []string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(n.dir, "access.log"))
	if err != nil {
		t.Fatalf("nginx access log: %v", err)
	}
	ok = map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		fields := strings.Fields(l)
		if len(fields) == 5 && strings.HasPrefix(fields[3], "2") {
			ok[fields[0]]++
		} else if l != "" {
			others = append(others, l)
		}
	}
	return ok, others
}

func urlHost(host string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]"
	}
	return host
}

// testRealNginxCurl: curl downloads and uploads a few MB from nginx through
// pepsal, over HTTP/1.1 in clear and HTTPS with HTTP/2, IPv4 and IPv6, every
// file byte-exact; nginx saw every request come from the router.
func testRealNginxCurl(t *testing.T, cfg suite) {
	curl := realTool(t, "curl", "curl")
	b := newBed(t, cfg)
	ngx := startNginx(t, b)
	const size = 4 << 20
	download := writeRandomFile(t, filepath.Join(ngx.dir, "www", "blob"), size, 0x4e47)
	work := t.TempDir()
	upload := writeRandomFile(t, filepath.Join(work, "upload"), size, 0x5550)
	b.startPepsal()
	before := b.status().counter("syn_diverted")

	requests := 0
	for _, f := range families {
		for _, p := range []struct {
			scheme, flag, version string
			port                  int
		}{
			{"http", "--http1.1", "1.1", nginxHTTP},
			{"https", "--http2", "2", nginxHTTPS},
		} {
			base := fmt.Sprintf("%s://%s:%d", p.scheme, urlHost(f.server), p.port)
			what := fmt.Sprintf("%s %s HTTP/%s", f.name, p.scheme, p.version)
			// The certificate is verified, not just accepted (-k): the TLS
			// session really ends at nginx.
			common := []string{"-sS", "--fail", "--max-time", "30", p.flag, "--cacert", ngx.cert, "-w", "%{http_version} %{http_code}"}

			out := filepath.Join(work, "down-"+f.name+"-"+p.scheme)
			got, err := runClient(b.Client, 40*time.Second, nil, curl, append(common, "-o", out, base+"/blob")...)
			requests++
			if err != nil {
				t.Errorf("%s download: %v", what, err)
			} else {
				if want := p.version + " 200"; string(got) != want {
					t.Errorf("%s download: curl reports %q, want %q", what, got, want)
				}
				checkFile(t, what+" download", out, download)
			}

			name := "up-" + f.name + "-" + p.scheme
			got, err = runClient(b.Client, 40*time.Second, nil, curl, append(common, "-o", "/dev/null", "-T", filepath.Join(work, "upload"), base+"/up/"+name)...)
			requests++
			if err != nil {
				t.Errorf("%s upload: %v", what, err)
			} else {
				if want := p.version + " 201"; string(got) != want {
					t.Errorf("%s upload: curl reports %q, want %q (created)", what, got, want)
				}
				checkFile(t, what+" upload stored by nginx", filepath.Join(ngx.dir, "store", "up", name), upload)
			}
		}
	}
	b.divertedSince(before, uint64(requests), "curl")
	ok, others := ngx.accessLog(t)
	for _, f := range families {
		if ok[f.routerServer] != requests/2 {
			t.Errorf("nginx served %d requests from the router's %s, want %d (split): %v", ok[f.routerServer], f.routerServer, requests/2, ok)
		}
	}
	if len(others) > 0 {
		t.Errorf("nginx logged failed requests:\n%s", strings.Join(others, "\n"))
	}
}

// h2loadSummary is h2load's "requests:" line.
var h2loadSummary = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)

// testRealH2loadBurst: h2load bursts against nginx through pepsal, IPv4 and
// IPv6, not one request may fail: HTTP/1.1 in clear and over TLS, where nginx
// closes every connection after nginxKeepalive requests (bursts of short
// connections, with a TLS handshake each), and HTTP/2 over TLS on c
// concurrent connections.
func testRealH2loadBurst(t *testing.T, cfg suite) {
	h2load := realTool(t, "h2load", "nghttp2-client")
	b := newBed(t, cfg)
	ngx := startNginx(t, b)
	writeRandomFile(t, filepath.Join(ngx.dir, "www", "small"), 8<<10, 0x5348)
	b.startPepsal()

	const n, c = 2000, 50
	for _, f := range families {
		for _, p := range []struct {
			what  string
			conns uint64
			args  []string
		}{
			{"HTTP/1.1", n / nginxKeepalive, []string{"--h1", fmt.Sprintf("http://%s:%d/small", urlHost(f.server), nginxHTTP)}},
			{"HTTP/1.1 over TLS", n / nginxKeepalive, []string{"--h1", fmt.Sprintf("https://%s:%d/small", urlHost(f.server), nginxHTTPSShort)}},
			{"h2 over TLS", c, []string{fmt.Sprintf("https://%s:%d/small", urlHost(f.server), nginxHTTPS)}},
		} {
			what := f.name + " " + p.what
			before := b.status().counter("syn_diverted")
			args := append([]string{"-n", strconv.Itoa(n), "-c", strconv.Itoa(c), "-T", "20"}, p.args...)
			start := time.Now()
			out, err := runClient(b.Client, 40*time.Second, nil, h2load, args...)
			if err != nil {
				t.Errorf("%s: %v\n%s", what, err, out)
				continue
			}
			m := h2loadSummary.FindStringSubmatch(string(out))
			if m == nil {
				t.Errorf("%s: no requests line in h2load's output:\n%s", what, out)
				continue
			}
			if m[1] != strconv.Itoa(n) || m[4] != strconv.Itoa(n) || m[5] != "0" || m[6] != "0" || m[7] != "0" {
				t.Errorf("%s: %s, want %d succeeded and none failed, errored or timed out\n%s", what, m[0], n, out)
			}
			b.divertedSince(before, p.conns, what)
			t.Logf("%s: %s in %s", what, m[0], time.Since(start).Round(time.Millisecond))
		}
	}
	ok, others := ngx.accessLog(t)
	for _, f := range families {
		if ok[f.routerServer] != 3*n {
			t.Errorf("nginx served %d requests from the router's %s, want %d (split): %v", ok[f.routerServer], f.routerServer, 3*n, ok)
		}
	}
	if len(others) > 0 {
		t.Errorf("nginx logged %d failed requests, first: %s", len(others), others[0])
	}
}

// testRealSCP: scp of a few MB to and from an OpenSSH sshd through pepsal,
// IPv4 and IPv6, byte-exact; sshd saw the router as the client.
func testRealSCP(t *testing.T, cfg suite) {
	sshd := realTool(t, "sshd", "openssh-server")
	scp := realTool(t, "scp", "openssh-client")
	keygen := realTool(t, "ssh-keygen", "openssh-client")
	b := newBed(t, cfg)
	dir := t.TempDir()
	for _, k := range []string{"host_key", "client_key"} {
		if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-C", "pepsal-test", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen %s: %v\n%s", k, err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client_key.pub"))
	if err != nil {
		t.Fatalf("client public key: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatalf("authorized_keys: %v", err)
	}
	// sshd insists on its privilege separation directory, which the Debian
	// service would create at boot.
	if _, err := os.Stat("/run/sshd"); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("privilege separation directory: %v", err)
		}
		t.Cleanup(func() { os.Remove("/run/sshd") })
	}
	const port = 2222
	// Root login by key only, and only in this throw-away configuration;
	// StrictModes off because the files live under /tmp.
	conf := fmt.Sprintf(`Port %[1]d
ListenAddress %[2]s
ListenAddress %[3]s
HostKey %[4]s/host_key
PidFile %[4]s/sshd.pid
AuthorizedKeysFile %[4]s/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel INFO
`, port, testbed.ServerV4, testbed.ServerV6, dir)
	confPath := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatalf("write sshd_config: %v", err)
	}
	srv := startRealServer(t, b.Server, sshd, "-D", "-e", "-f", confPath)
	srv.waitListening(t, b.Server, hostPort(testbed.ServerV4, port), hostPort(testbed.ServerV6, port))

	const size = 4 << 20
	up := writeRandomFile(t, filepath.Join(dir, "up"), size, 0x5343)
	down := writeRandomFile(t, filepath.Join(dir, "down"), size, 0x5344)
	b.startPepsal()
	before := b.status().counter("syn_diverted")
	scpArgs := func(args ...string) []string {
		return append([]string{"-q", "-F", "/dev/null", "-i", filepath.Join(dir, "client_key"), "-P", strconv.Itoa(port),
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
			"-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"}, args...)
	}
	copies := 0
	for _, f := range families {
		remote := "root@" + urlHost(f.server) + ":"
		// The server writes into dir too: both namespaces share the file system.
		upDst := filepath.Join(dir, "uploaded-"+f.name)
		if _, err := runClient(b.Client, 40*time.Second, nil, scp, scpArgs(filepath.Join(dir, "up"), remote+upDst)...); err != nil {
			t.Errorf("%s scp upload: %v", f.name, err)
		} else {
			checkFile(t, f.name+" scp upload", upDst, up)
		}
		downDst := filepath.Join(dir, "downloaded-"+f.name)
		if _, err := runClient(b.Client, 40*time.Second, nil, scp, scpArgs(remote+filepath.Join(dir, "down"), downDst)...); err != nil {
			t.Errorf("%s scp download: %v", f.name, err)
		} else {
			checkFile(t, f.name+" scp download", downDst, down)
		}
		copies += 2
	}
	b.divertedSince(before, uint64(copies), "scp")
	// sshd logs who logged in; through pepsal that is the router.
	log := srv.Output()
	for _, f := range families {
		if got := strings.Count(log, "Accepted publickey for root from "+f.routerServer+" "); got != 2 {
			t.Errorf("sshd accepted %d logins from the router's %s, want 2 (split)", got, f.routerServer)
		}
	}
}

// testRealSocatHalfClose: socat sends a request and half-closes (stdin at
// EOF); the server reads to EOF before it answers with several MB, which must
// all reach socat, whose own direction is already closed.
func testRealSocatHalfClose(t *testing.T, cfg suite) {
	socat := realTool(t, "socat", "socat")
	b := newBed(t, cfg)
	const port, reqSize, replySize = 9300, 1 << 20, 8 << 20
	peers := make(chan string, 4)
	for _, f := range families {
		serve(t, b.Server, hostPort(f.server, port), func(c *net.TCPConn) {
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			peers <- host
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil {
				return
			}
			// The reply starts only after the client's FIN: it names what was
			// received, then a large deterministic body.
			w := bufio.NewWriterSize(c, 64<<10)
			fmt.Fprintf(w, "%d %x\n", n, h.Sum(nil))
			if _, err := io.Copy(w, io.LimitReader(newStream(uint64(n)), replySize)); err != nil {
				return
			}
			if w.Flush() == nil {
				c.CloseWrite()
			}
		})
	}
	b.startPepsal()
	before := b.status().counter("syn_diverted")

	var request bytes.Buffer
	reqHash := sha256.New()
	io.Copy(io.MultiWriter(&request, reqHash), io.LimitReader(newStream(0x5143), reqSize))
	var want bytes.Buffer
	fmt.Fprintf(&want, "%d %x\n", reqSize, reqHash.Sum(nil))
	io.Copy(&want, io.LimitReader(newStream(reqSize), replySize))

	for _, f := range families {
		addr := "TCP4:" + hostPort(f.server, port)
		if f.name == "ipv6" {
			addr = "TCP6:" + hostPort(f.server, port)
		}
		// -t 30: after stdin's EOF, socat keeps reading the reply up to 30 s.
		got, err := runClient(b.Client, 40*time.Second, bytes.NewReader(request.Bytes()), socat, "-t", "30", "-", addr)
		if err != nil {
			t.Errorf("%s socat: %v", f.name, err)
			continue
		}
		if !bytes.Equal(got, want.Bytes()) {
			line, _, _ := bytes.Cut(got, []byte("\n"))
			t.Errorf("%s: socat got %d bytes (first line %.80q), want %d bytes (first line %q)", f.name, len(got), line, want.Len(), fmt.Sprintf("%d %x", reqSize, reqHash.Sum(nil)))
		}
		select {
		case p := <-peers:
			if p != f.routerServer {
				t.Errorf("%s: server saw %s, want the router %s (split)", f.name, p, f.routerServer)
			}
		default:
			t.Errorf("%s: the server saw no connection", f.name)
		}
	}
	b.divertedSince(before, uint64(len(families)), "socat")
}
