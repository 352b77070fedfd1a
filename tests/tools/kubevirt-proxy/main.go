// Command kubevirt-proxy runs KubeVirt's own live-migration proxy
// (kubevirt.io/kubevirt v1.9.0, package pkg/virt-handler/migration-proxy) as
// a standalone process, so that the side-by-side benchmark of issue 16
// (manager/dataplane/benches/migration_cpu.rs) can put it next to mignet's
// proxy on the same QEMU migration stream.
//
// The package is used as a library, not copied: NewSourceProxy and
// NewTargetProxy with Start and Stop, exactly as virt-handler's
// migrationProxyManager calls them. The design this exercises is KubeVirt's:
// one TLS connection per QEMU connection (every multifd channel is one more
// unix connection, hence one more TLS connection), and per connection two
// goroutines that each do a plain io.Copy (32 KiB buffer; neither side is a
// ReaderFrom/WriterTo that could splice through TLS), with no pooling,
// batching or zero-copy.
//
// Built by tests/tools/build-kubevirt-proxy.sh (it writes a throwaway wrapper
// module around this file). Usage:
//
//	kubevirt-proxy source --unix PATH --target HOST:PORT --ca CA.pem --cert CERT.pem --key KEY.pem
//	kubevirt-proxy target --bind IP --port PORT --unix PATH --ca CA.pem --cert CERT.pem --key KEY.pem
//
// source listens on the unix socket PATH (where the source QEMU connects) and
// for each connection dials HOST:PORT over TLS. target listens on TCP
// IP:PORT and for each TLS connection dials the unix socket PATH (where the
// destination QEMU listens). virt-handler binds the target to the zero
// address (0.0.0.0 or ::) on a random port; here the address and port are
// what --bind and --port say, so the benchmark can keep it on one address
// and knows the port in advance (port 0 is refused: the library keeps the
// chosen port to itself).
//
// Once listening, the program prints the single line "ready" on stdout; it
// runs until SIGTERM or SIGINT, then stops the proxy and exits 0. Errors go
// to stderr with a non-zero exit. On stderr too: one line per TLS handshake
// with the negotiated version and cipher suite, and KubeVirt's own log lines
// (JSON): its warnings and errors always, its info lines (per-connection
// byte counts, ...) with the extra flag -v.
//
// Note a behaviour of the library that a benchmark sees: when either
// direction of a proxied connection ends, the proxy closes the connection it
// accepted and never the one it dialed. So when the source QEMU closes its
// socket, the TLS connection stays open (CLOSE-WAIT once the target side
// goes) and the destination gets no EOF; a reader must count bytes, as QEMU
// does (its migration stream says where it ends). When the destination
// closes first, the target proxy closes the TLS connection.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"kubevirt.io/client-go/log"

	diskutils "kubevirt.io/kubevirt/pkg/ephemeral-disk-utils"
	migrationproxy "kubevirt.io/kubevirt/pkg/virt-handler/migration-proxy"
)

const usage = `usage:
  kubevirt-proxy source --unix PATH --target HOST:PORT --ca CA.pem --cert CERT.pem --key KEY.pem
  kubevirt-proxy target --bind IP --port PORT --unix PATH --ca CA.pem --cert CERT.pem --key KEY.pem
`

// The key virt-handler would pass (the VMI's UID); it only tags log lines.
const proxyKey = "mignet-bench"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "kubevirt-proxy: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("missing subcommand")
	}
	mode := args[0]
	if mode == "help" || mode == "-h" || mode == "--help" {
		fmt.Print(usage)
		return nil
	}
	if mode != "source" && mode != "target" {
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("unknown subcommand %q", mode)
	}

	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	unix := fs.String("unix", "", "unix socket: source listens here, target dials here")
	target := fs.String("target", "", "source only: HOST:PORT of the target proxy")
	bind := fs.String("bind", "", "target only: IP address to listen on")
	port := fs.Int("port", 0, "target only: TCP port to listen on")
	caPath := fs.String("ca", "", "PEM file of the CA that signs both ends' certificates")
	certPath := fs.String("cert", "", "PEM certificate of this end")
	keyPath := fs.String("key", "", "PEM private key of this end")
	verbose := fs.Bool("v", false, "also print KubeVirt's info log lines (JSON, as virt-handler at -v 2): per-connection byte counts")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *unix == "" || *caPath == "" || *certPath == "" || *keyPath == "" {
		return errors.New("--unix, --ca, --cert and --key are required")
	}
	switch mode {
	case "source":
		if *target == "" {
			return errors.New("source needs --target HOST:PORT")
		}
		if *bind != "" || *port != 0 {
			return errors.New("--bind and --port are for target")
		}
	case "target":
		if *bind == "" {
			return errors.New("target needs --bind IP")
		}
		if *port <= 0 || *port > 65535 {
			return errors.New("target needs --port in 1..65535")
		}
		if *target != "" {
			return errors.New("--target is for source")
		}
	}

	if *verbose {
		// virt-handler calls this after parsing its flags; before it the
		// library's logger drops info lines (it keeps warnings and errors).
		log.InitializeLogging("virt-handler")
	}

	ca, err := loadCA(*caPath)
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(*certPath, *keyPath)
	if err != nil {
		return fmt.Errorf("loading %s / %s: %w", *certPath, *keyPath, err)
	}

	// virt-handler's unix listener (the source side) chowns the socket to
	// the user "qemu", which a test machine need not have. The package's own
	// test swaps the package-level DefaultOwnershipManager for a no-op with
	// this exported helper; we do the same.
	diskutils.MockDefaultOwnershipManager()

	var proxy migrationproxy.MigrationProxyListener
	switch mode {
	case "source":
		// virt-handler passes two client configs, the migration one (tried
		// first) and the old virt-handler client one (the fallback); both
		// come from SetupTLSForVirtHandlerClients, with different cert
		// managers. Here both hold the same certificate.
		oldClient := clientTLSConfig(ca, &cert)
		migClient := clientTLSConfig(ca, &cert)
		proxy = migrationproxy.NewSourceProxy(*unix, *target, oldClient, migClient, proxyKey)
	case "target":
		proxy = migrationproxy.NewTargetProxy(*bind, *port, serverTLSConfig(ca, &cert), *unix, proxyKey)
	}

	// Subscribe before Start so that a signal sent right after "ready" is
	// not lost.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	if err := proxy.Start(); err != nil {
		proxy.Stop()
		return fmt.Errorf("%s proxy: %w", mode, err)
	}
	if _, err := io.WriteString(os.Stdout, "ready\n"); err != nil {
		proxy.Stop()
		return err
	}
	_ = os.Stdout.Sync() // stdout is unbuffered in Go; Sync fails on pipes, harmlessly

	s := <-sigs
	fmt.Fprintf(os.Stderr, "kubevirt-proxy %s: %v, stopping\n", mode, s)
	proxy.Stop()
	if mode == "source" {
		// As migrationProxyManager.StopSourceListener does.
		_ = os.RemoveAll(*unix)
	}
	return nil
}

// The TLS configs below reproduce, field for field, what virt-handler
// v1.9.0 builds for its migration proxy in pkg/util/tls/tls.go
// (SetupTLSForVirtHandlerServer -> SetupTLSForServer for the target,
// SetupTLSForVirtHandlerClients -> SetupTLSForClients for the source), with
// a fixed certificate and CA instead of its rotating cert and CA managers.
// We cannot call those functions: pkg/util/tls imports
// pkg/virt-operator/.../components -> pkg/controller ->
// kubevirt.io/virt-template-api and virt-template-client-go v0.2.0, which
// the Go module proxy does not serve (403 "not available"; KubeVirt builds
// from its vendor/ tree). The migration-proxy package itself does not need
// them.
//
// Peer verification: virt-handler (--externally-managed=false, its default)
// accepts a peer certificate only if it chains to the KubeVirt CA with the
// right extended key usage (server auth when the source checks the target,
// client auth when the target checks the source) AND its subject CN is one
// of KubeVirt's fixed names: "kubevirt.io:system:node:virt-handler" for the
// target, "kubevirt.io:system:client:virt-handler" or
// "kubevirt.io:system:client:migration" (--migration-cn-types) for the
// source. Our certificates come from mignet's own CA (rcgen) with mignet's
// names, so we follow virt-handler's --externally-managed=true mode
// (certificates issued by an outside CA, e.g. cert-manager): the same
// chain-and-EKU check against the CA (peer-sent intermediates allowed), no
// CN rule. Neither side checks a hostname or IP SAN, as in KubeVirt: both
// set InsecureSkipVerify only to put that callback in place of Go's own
// verification of the server. The target additionally has Go verify the
// client's chain (ClientAuth: RequireAndVerifyClientCert, ClientCAs).
//
// Versions and suites: no KubeVirt CR here, so KubeVirt's defaults
// (getTLSConfiguration): TLS 1.2 minimum, Go's default cipher suites. Go's
// client offers TLS 1.3 and the server takes it, so 1.3 is negotiated
// (logged per handshake on stderr).

// serverTLSConfig mirrors SetupTLSForServer: an outer config whose
// GetConfigForClient builds the per-connection one.
func serverTLSConfig(ca *x509.CertPool, cert *tls.Certificate) *tls.Config {
	// #nosec G402 -- as in KubeVirt: VerifyPeerCertificate does the check.
	return &tls.Config{
		InsecureSkipVerify: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert, nil
		},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{
				CipherSuites: nil,              // CipherSuiteIds(nil): Go's defaults
				MinVersion:   tls.VersionTLS12, // TLSVersion(v1.VersionTLS12)
				ClientCAs:    ca,
				GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
					return cert, nil
				},
				InsecureSkipVerify: true,
				VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
					return verifyPeerCert(rawCerts, ca, x509.ExtKeyUsageClientAuth)
				},
				ClientAuth:       tls.RequireAndVerifyClientCert,
				VerifyConnection: logHandshake("target"),
			}, nil
		},
	}
}

// clientTLSConfig mirrors SetupTLSForClients.
func clientTLSConfig(ca *x509.CertPool, cert *tls.Certificate) *tls.Config {
	// #nosec G402 -- as in KubeVirt: VerifyPeerCertificate does the check.
	return &tls.Config{
		InsecureSkipVerify: true,
		ClientAuth:         tls.RequireAndVerifyClientCert, // set by KubeVirt, inert on a client
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert, nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert, nil
		},
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			return verifyPeerCert(rawCerts, ca, x509.ExtKeyUsageServerAuth)
		},
		VerifyConnection: logHandshake("source"),
	}
}

// verifyPeerCert mirrors KubeVirt's verifyPeerCert with externallyManaged
// true: the leaf must chain to the CA (intermediates as the peer sent them)
// and carry the extended key usage; the CN rule is what externallyManaged
// skips.
func verifyPeerCert(rawCerts [][]byte, ca *x509.CertPool, usage x509.ExtKeyUsage) error {
	if len(rawCerts) == 0 {
		return errors.New("no client certificate provided.")
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return fmt.Errorf("failed to parse peer certificate: %v", err)
	}
	intermediates := x509.NewCertPool()
	for _, raw := range rawCerts[1:] {
		if c, err := x509.ParseCertificate(raw); err == nil {
			intermediates.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         ca,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
		return fmt.Errorf("could not verify peer certificate: %v", err)
	}
	return nil
}

func loadCA(path string) (*x509.CertPool, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, nil
}

// logHandshake reports each completed handshake on stderr. It runs as
// VerifyConnection, after KubeVirt's VerifyPeerCertificate, and accepts.
func logHandshake(side string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		peer := "-"
		if len(cs.PeerCertificates) > 0 {
			peer = cs.PeerCertificates[0].Subject.String()
		}
		fmt.Fprintf(os.Stderr, "kubevirt-proxy %s: handshake %s %s resumed=%v peer=%q\n",
			side, tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), cs.DidResume, peer)
		return nil
	}
}
