package tftp_test

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
)

//go:embed testdata/boot
var bootFiles embed.FS

// serve starts a server with cfg on a free loopback port; stop stops it.
func serve(cfg tftp.ServerConfig) (addr string, stop func(), err error) {
	quiet := slog.New(slog.DiscardHandler)
	sys, err := netio.NewSystem(netio.Config{Loops: 1, Logger: quiet})
	if err != nil {
		return "", nil, err
	}
	cfg.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Logger = quiet
	srv, err := tftp.NewServer(sys, cfg)
	if err != nil {
		sys.Shutdown(context.Background())
		return "", nil, err
	}
	return srv.Addr().String(), func() {
		srv.Close()
		sys.Shutdown(context.Background())
	}, nil
}

// A server serves files embedded in the program: any fs.FS serves
// through FromFS.
func ExampleFromFS() {
	boot, err := fs.Sub(bootFiles, "testdata")
	if err != nil {
		fmt.Println(err)
		return
	}
	addr, stop, err := serve(tftp.ServerConfig{FS: tftp.FromFS(boot)})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	var buf bytes.Buffer
	if _, err := (&tftp.Client{}).Get(context.Background(), addr, "/boot/pxelinux.cfg", &buf); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(buf.String())
	_, err = (&tftp.Client{}).Put(context.Background(), addr, "boot/new", strings.NewReader("x"), 1)
	fmt.Println(err)
	// Output:
	// DEFAULT linux
	// LABEL linux
	//   KERNEL vmlinuz
	// tftp: error 2 (access violation): access violation: uploads are disabled
}

// A server generates a file per request: here an iPXE script naming the
// client, as a boot service patches its binaries per client.
func ExampleReadFunc() {
	files := tftp.ReadFunc(func(req tftp.FileRequest) (io.Reader, int64, error) {
		if req.Name != "boot.ipxe" {
			return nil, 0, &tftp.Error{Code: tftp.ErrFileNotFound, Message: "only boot.ipxe here"}
		}
		script := fmt.Sprintf("#!ipxe\nchain http://boot.example/%s/kernel\n", req.Client.Addr())
		return strings.NewReader(script), int64(len(script)), nil
	})
	addr, stop, err := serve(tftp.ServerConfig{FS: files})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	var buf bytes.Buffer
	c := &tftp.Client{TSize: true}
	stats, err := c.Get(context.Background(), addr, "boot.ipxe", &buf)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(buf.String())
	fmt.Println("tsize", stats.Negotiated.TSize)
	_, err = c.Get(context.Background(), addr, "other", io.Discard)
	fmt.Println(err)
	// Output:
	// #!ipxe
	// chain http://boot.example/127.0.0.1/kernel
	// tsize 50
	// tftp: error 1 (file not found): only boot.ipxe here
}

// A remap rule, as in tftpd-hpa's map file, turns the backslashes of a
// Windows client's name into slashes; the result is still confined to
// the root.
func ExampleRemap() {
	dir, err := os.MkdirTemp("", "tftp-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	os.Mkdir(filepath.Join(dir, "boot"), 0o755)
	os.WriteFile(filepath.Join(dir, "boot", "pxelinux.0"), []byte("PXELINUX\n"), 0o644)

	rules, err := tftp.ParseRemap(strings.NewReader(`
rg \\ /                        # boot\pxelinux.0 is boot/pxelinux.0
r ^etc/(.*) ../etc/\1          # out of the root: refused all the same
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	addr, stop, err := serve(tftp.ServerConfig{Root: dir, Rewrite: rules.Rewrite})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	var buf bytes.Buffer
	if _, err := (&tftp.Client{}).Get(context.Background(), addr, `boot\pxelinux.0`, &buf); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(buf.String())
	_, err = (&tftp.Client{}).Get(context.Background(), addr, `etc\passwd`, io.Discard)
	fmt.Println(err)
	// Output:
	// PXELINUX
	// tftp: error 2 (access violation): access violation: outside the root
}

// Each client gets a directory of its own, named by its address, when the
// root has one (dnsmasq's --tftp-unique-root).
func ExampleFS_ClientDir() {
	dir, err := os.MkdirTemp("", "tftp-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	os.Mkdir(filepath.Join(dir, "127.0.0.1"), 0o755)
	os.WriteFile(filepath.Join(dir, "127.0.0.1", "pxelinux.cfg"), []byte("for 127.0.0.1\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "pxelinux.cfg"), []byte("for everyone else\n"), 0o644)

	fsys, err := tftp.NewFS(tftp.FSConfig{Root: dir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer fsys.Close()
	addr, stop, err := serve(tftp.ServerConfig{FS: fsys, Rewrite: fsys.ClientDir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	var buf bytes.Buffer
	if _, err := (&tftp.Client{}).Get(context.Background(), addr, "pxelinux.cfg", &buf); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(buf.String())
	// Output:
	// for 127.0.0.1
}
