package tftp

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
)

// FileRequest is a client's request for a file, as a server passes it to
// its Rewrite hook and its [Files].
type FileRequest struct {
	Op Opcode // OpRRQ (a download) or OpWRQ (an upload)
	// Name is the file name: as the client sent it for Rewrite, and as
	// Rewrite returned it for Files. It is a TFTP name, not a host path:
	// it may start with "/", hold ".." or a backslash; an implementation
	// that maps it onto a file tree must confine it (as [FS] and
	// [FromFS] do).
	Name   string
	Client netip.AddrPort
	Mode   string // ModeOctet or ModeNetascii
	// Options are the request's options, as the client sent them; none
	// for a download another server started and this one resumes.
	Options []Option
}

// Files is what a server serves: it opens a request's file for a download
// or an upload. [*FS] (a directory, sandboxed with [os.Root]) is the
// default; [FromFS] serves any [fs.FS] ([embed.FS], [testing/fstest.MapFS]);
// [ReadFunc] serves generated content.
//
// Errors refuse the request with an ERROR packet whose code is
// [ErrorCodeOf] the error: return an [*Error] to choose the code and the
// message the client sees, or wrap a sentinel of this package or of
// [io/fs] ([fs.ErrNotExist] is "file not found", [fs.ErrPermission] and
// [ErrWriteDisabled] "access violation"). Other errors are sent as
// ERROR 0 "server error": their text, which may name host paths, goes to
// the log only.
//
// The server calls OpenRead and OpenWrite on the transfer's event loop:
// they must not block for long (opening a local file is fine, a network
// fetch is not: fetch ahead, and serve from memory). They may be called
// from several goroutines at once.
type Files interface {
	// OpenRead opens req.Name for a download and returns its content and
	// its size in bytes, or -1 when unknown (the tsize option is then
	// left out of the OACK). Content that implements [io.ReaderAt] is
	// read with ReadAt (an [*os.File], or anything else with ReadAt and
	// a SyscallConn method, with one preadv(2) per window); other
	// content is read once, in order. Content that implements
	// [io.Closer] is closed when the transfer ends.
	OpenRead(req FileRequest) (content io.Reader, size int64, err error)
	// OpenWrite starts an upload to req.Name. The server writes the
	// received payload (decoded from netascii in that mode), then calls
	// Commit once the last block arrived, and acknowledges it only if
	// Commit returned nil; it calls Abort on any other end.
	OpenWrite(req FileRequest) (WriteFile, error)
}

// WriteFile is an upload in progress: Write takes the content in order,
// Commit publishes it atomically (a reader never sees part of it), Abort
// discards it. [*Upload] is the [FS] implementation. A WriteFile is used
// by one goroutine at a time; Commit runs away from the event loop, so it
// may block (to sync to disk).
type WriteFile interface {
	io.Writer
	Commit() error
	Abort() error
}

// OpenRead opens req.Name in the tree ([Files]): an [*os.File], read with
// preadv(2).
func (fsys *FS) OpenRead(req FileRequest) (io.Reader, int64, error) {
	f, size, err := fsys.Open(req.Name)
	if err != nil {
		return nil, 0, err
	}
	return f, size, nil
}

// OpenWrite starts an upload to req.Name ([Files]): see [FS.Create].
func (fsys *FS) OpenWrite(req FileRequest) (WriteFile, error) {
	u, err := fsys.Create(req.Name)
	if err != nil {
		return nil, err
	}
	return u, nil
}

// FromFS returns Files that serve fsys read-only: a request's name is
// cleaned as [FS] cleans it (leading slashes dropped, ".." refused, no
// backslash or NUL), then opened with fsys.Open; only regular files are
// served; uploads are refused with [ErrWriteDisabled]. The files of an
// [embed.FS] or an [testing/fstest.MapFS] implement [io.ReaderAt], so a download
// can retransmit any block; those of [os.DirFS] are [*os.File]s, read with
// preadv(2). FromFS adds no sandbox of its own: [os.DirFS] follows
// symbolic links out of its directory, where [NewFS] does not.
func FromFS(fsys fs.FS) Files { return ioFS{fsys} }

type ioFS struct{ fsys fs.FS }

func (f ioFS) OpenRead(req FileRequest) (io.Reader, int64, error) {
	rel, err := cleanName(req.Name)
	if err != nil {
		return nil, 0, err
	}
	if !fs.ValidPath(rel) {
		return nil, 0, fmt.Errorf("%w: %q", ErrInvalidName, req.Name)
	}
	file, err := f.fsys.Open(rel)
	if err != nil {
		return nil, 0, fmt.Errorf("tftp: %w", err)
	}
	size, err := regularSize(file, req.Name)
	if err != nil {
		return nil, 0, err
	}
	return file, size, nil
}

func (ioFS) OpenWrite(req FileRequest) (WriteFile, error) {
	return nil, fmt.Errorf("%w: %q", ErrWriteDisabled, req.Name)
}

// ReadFunc is Files that serve downloads from a function, for content
// generated per request (a boot script for this client, a binary patched
// for it); it refuses uploads with [ErrWriteDisabled]. A [bytes.Reader]
// or [strings.Reader] is a good content: it has ReadAt. Fall back to
// another Files for the names the function does not generate.
type ReadFunc func(req FileRequest) (content io.Reader, size int64, err error)

// OpenRead calls f.
func (f ReadFunc) OpenRead(req FileRequest) (io.Reader, int64, error) { return f(req) }

// OpenWrite refuses the upload.
func (f ReadFunc) OpenWrite(req FileRequest) (WriteFile, error) {
	return nil, fmt.Errorf("%w: %q", ErrWriteDisabled, req.Name)
}

// ClientDir is a Rewrite hook ([ServerConfig].Rewrite) that gives each
// client a directory of its own, as dnsmasq's --tftp-unique-root does:
// when the root holds a directory named by the client's IP address
// ("192.0.2.7", or "2001:db8::7" for IPv6; an IPv4 client of a dual-stack
// socket is named in IPv4 form), the request's name is looked up in that
// directory, otherwise in the root. The name is cleaned first, so that no
// ".." leaves the client's directory.
func (fsys *FS) ClientDir(req FileRequest) (string, error) {
	rel, err := cleanName(req.Name)
	if err != nil {
		return "", err
	}
	dir := req.Client.Addr().Unmap().WithZone("").String()
	if fi, err := fsys.root.Stat(dir); err == nil && fi.IsDir() {
		return dir + "/" + rel, nil
	}
	return rel, nil
}

// ChainRewrite returns a Rewrite hook that applies fns in order, each to
// the name the previous one returned; the first error refuses the request.
func ChainRewrite(fns ...func(FileRequest) (string, error)) func(FileRequest) (string, error) {
	return func(req FileRequest) (string, error) {
		for _, fn := range fns {
			name, err := fn(req)
			if err != nil {
				return "", err
			}
			req.Name = name
		}
		return req.Name, nil
	}
}

// ErrNotReplicable reports a replicated server ([ServerConfig].Replicator
// or Resume) configured with Files other than an [*FS]. A download resumes
// on another node at a byte offset, and an upload is published on every
// node: the cluster checks that every node has the same bytes with a
// SHA-256 digest of the file that each node computes from its own
// directory tree (cached by size and modification time). Content from
// another Files (an embedded tree, generated bytes) has no such identity
// that a node could check before it resumes, so a replicated server
// serves directory trees only. A Rewrite hook is allowed: the transfer
// records the rewritten name, and every node opens that one.
var ErrNotReplicable = errors.New("tftp: a replicated server serves only a directory tree (an *FS)")

// ErrStandby, wrapped by an error of [Replicator.Begin], says that this
// server is no longer the one to serve (a replicated server that lost its
// leadership while the request waited): the request is dropped without an
// answer, so that the client's retransmitted request reaches the server
// that takes over, where an ERROR would have failed the client.
var ErrStandby = errors.New("tftp: another server takes over")

// fileRequest is the request of x for its Files.
func (x *xfer) fileRequest() FileRequest {
	return FileRequest{Op: x.req.Op, Name: x.req.Filename, Client: x.client, Mode: x.req.Mode, Options: x.req.Options}
}

// rewrite applies the server's Rewrite hook to the request's name, in
// place: the transfer's state, and so a replicated transfer's record,
// holds the rewritten name.
func (x *xfer) rewrite() error {
	fn := x.srv.cfg.Rewrite
	if fn == nil {
		return nil
	}
	name, err := fn(x.fileRequest())
	if err != nil {
		return err
	}
	if name != x.req.Filename {
		x.log.Debug("tftp: file name rewritten", "to", logName(name))
		x.req.Filename = name
	}
	return nil
}

// openRead opens the download's file through Rewrite and the Files.
func (x *xfer) openRead() (io.Reader, int64, error) {
	if err := x.rewrite(); err != nil {
		return nil, 0, err
	}
	content, size, err := x.srv.files.OpenRead(x.fileRequest())
	if err == nil && content == nil {
		err = errNoContent
	}
	return content, size, err
}

var errNoContent = errors.New("tftp: Files returned neither a file nor an error")

// openWrite creates the upload through Rewrite and the Files.
func (x *xfer) openWrite() (WriteFile, error) {
	if err := x.rewrite(); err != nil {
		return nil, err
	}
	w, err := x.srv.files.OpenWrite(x.fileRequest())
	if err == nil && w == nil {
		err = errNoContent
	}
	return w, err
}

// reopen opens the file of a download another server started: its name is
// already rewritten.
func (x *xfer) reopen(st TransferState) (io.Reader, int64, error) {
	content, size, err := x.srv.files.OpenRead(FileRequest{Op: OpRRQ, Name: st.Filename, Client: x.client, Mode: st.Mode})
	if err == nil && content == nil {
		err = errNoContent
	}
	return content, size, err
}

// contentSource returns the block source of a download's content from at:
// ReadAt when the content has it (preadv for a file), else one pass of
// Read, which cannot start past the beginning.
func contentSource(content io.Reader, netascii bool, at sourcePos) (blockSource, error) {
	if ra, ok := content.(io.ReaderAt); ok {
		if netascii {
			return newNetasciiSource(ra, at), nil
		}
		return newOctetSource(ra, at.Offset), nil
	}
	if at != (sourcePos{}) {
		return nil, errors.New("tftp: content without ReadAt cannot resume past its start")
	}
	if netascii {
		content = NewNetasciiReader(content)
	}
	return &readerSource{r: content}, nil
}

// closeContent closes a download's content if it is an io.Closer.
func closeContent(content io.Reader) {
	if c, ok := content.(io.Closer); ok {
		c.Close()
	}
}

// uploadContent opens a complete upload's content for a replicated
// commit; the server refuses Files other than an *FS when it replicates.
func uploadContent(u WriteFile) (*os.File, error) {
	up, ok := u.(*Upload)
	if !ok {
		return nil, ErrNotReplicable
	}
	return up.content()
}

// serverFiles returns the Files of cfg, opening Root when FS is nil; own
// is the FS the server opened, to close when it stops.
func serverFiles(cfg *ServerConfig) (files Files, own *FS, err error) {
	files = cfg.FS
	if f, ok := files.(*FS); ok && f == nil {
		files = nil
	}
	if files == nil {
		if cfg.Root == "" {
			return nil, nil, errors.New("tftp: ServerConfig needs a Root or an FS")
		}
		own, err = NewFS(FSConfig{Root: cfg.Root, AllowWrite: cfg.AllowWrite, AllowOverwrite: cfg.AllowOverwrite})
		if err != nil {
			return nil, nil, err
		}
		files = own
	}
	if cfg.Replicator != nil || cfg.Resume != nil {
		if _, ok := files.(*FS); !ok {
			return nil, nil, fmt.Errorf("%w: ServerConfig.FS is a %T", ErrNotReplicable, files)
		}
	}
	return files, own, nil
}
