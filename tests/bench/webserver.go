// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// WriteSite writes the page's sub-resources and its two documents (h1.html
// with http:// origins, h2.html with https://) under dir/www, and a
// self-signed certificate for the origin addresses.
func WriteSite(dir string, p *Page, addrs []string) error {
	www := filepath.Join(dir, "www")
	if err := os.MkdirAll(filepath.Join(www, "r"), 0o755); err != nil {
		return err
	}
	for _, r := range p.Resources {
		if err := os.WriteFile(filepath.Join(www, r.Path), p.Body(r), 0o644); err != nil {
			return err
		}
	}
	for _, proto := range []struct{ file, scheme string }{{"h1.html", "http"}, {"h2.html", "https"}} {
		var origins []string
		for _, a := range addrs {
			origins = append(origins, proto.scheme+"://"+a)
		}
		html, err := p.HTML(origins)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(www, proto.file), html, 0o644); err != nil {
			return err
		}
	}
	return writeCert(dir, addrs)
}

// writeCert makes a self-signed ECDSA certificate valid for the addresses
// (the browser runs with --ignore-certificate-errors anyway).
func writeCert(dir string, addrs []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pepsal-bench"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, a := range addrs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(a))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}

// NginxConf is the configuration of one nginx serving dir/www on port 80
// (HTTP/1.1) and 443 (TLS, HTTP/2) of each address, one server block per
// origin. Timing-Allow-Origin lets the page read its cross-origin timing.
func NginxConf(dir string, addrs []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `user root;
worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    types { text/html html; text/css css; application/javascript js; image/bmp bmp; }
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    ssl_certificate %[1]s/cert.pem;
    ssl_certificate_key %[1]s/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    add_header Timing-Allow-Origin "*" always;
    add_header Cache-Control "no-store" always;
`, dir)
	for _, a := range addrs {
		fmt.Fprintf(&b, "    server {\n        listen %s:80;\n        listen %s:443 ssl http2;\n        root %s/www;\n    }\n", a, a, dir)
	}
	b.WriteString("}\n")
	return b.String()
}

// StartNginx runs nginx with NginxConf in the site's namespace and waits
// until every listener accepts.
func StartNginx(ctx context.Context, site Site, dir string, addrs []string) (*Daemon, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(NginxConf(dir, addrs)), 0o644); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return nil, errors.New("nginx not found (apt-get install nginx)")
	}
	d, err := launch(site, bin, "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", conf)
	if err != nil {
		return nil, err
	}
	ready := func() bool {
		err := site.NS.Do(func() error {
			for _, a := range addrs {
				for _, port := range []string{"80", "443"} {
					c, err := net.DialTimeout("tcp", net.JoinHostPort(a, port), time.Second)
					if err != nil {
						return err
					}
					c.Close()
				}
			}
			return nil
		})
		return err == nil
	}
	if err := d.waitReady(ctx, ready, func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return "nginx not listening: " + lastLine(string(b)+d.Output(), nil)
	}); err != nil {
		return nil, err
	}
	return d, nil
}

// NginxVersion is "nginx/1.22.1" or the error.
func NginxVersion() string {
	out, err := exec.Command("nginx", "-v").CombinedOutput()
	if err != nil {
		return "nginx: " + err.Error()
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: ")
}

// routeCC makes the namespace's IPv4 routes carry a congestion control
// (ip route congctl): nginx cannot set TCP_CONGESTION on its sockets, and the
// namespace default cannot be written here (EPERM).
func routeCC(ns *testbed.NS, cc string) error {
	out, err := ns.Command("ip", "-4", "route", "show").Output()
	if err != nil {
		return fmt.Errorf("ip route show in %s: %w", ns.Name, err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		args := append(append([]string{"-4", "route", "replace"}, strings.Fields(line)...), "congctl", cc)
		if out, err := ns.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s in %s: %w: %s", strings.Join(args, " "), ns.Name, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// originAddrs: the server's address and the next two, one origin each.
func originAddrs(base string) []string {
	ip := net.ParseIP(base).To4()
	out := []string{base}
	for i := 1; i < pageOrigins; i++ {
		n := make(net.IP, 4)
		copy(n, ip)
		n[3] += byte(i)
		out = append(out, n.String())
	}
	return out
}
