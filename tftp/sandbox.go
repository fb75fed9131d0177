package tftp

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// FSConfig configures an [FS]. The zero value, with Root set, serves files
// read-only.
type FSConfig struct {
	// Root is the directory served. Required.
	Root string
	// AllowWrite allows uploads (WRQ).
	AllowWrite bool
	// AllowOverwrite allows an upload to replace an existing regular file.
	// Without it, an upload to a name that exists is refused.
	AllowOverwrite bool
}

// FS is the file tree a server reads and writes, confined to one directory
// with [os.Root]: no name, ".." component or symbolic link reaches outside
// it. Errors wrap the sentinels of this package or [fs.PathError]s;
// [ErrorCodeOf] maps them to TFTP error codes.
//
// File names are TFTP names, not host paths: "/" is the only separator;
// leading slashes are dropped, so "/boot/x" is "boot/x" inside the root;
// names with a NUL byte or a backslash are refused. A symbolic link must be
// relative and stay inside the root ([os.Root] refuses absolute links even
// when they point inside).
//
// Uploads are written to a temporary file named ".NAME.tftp-upload-RANDOM"
// next to the target and moved into place by [Upload.Commit], so an
// interrupted upload never leaves a partial file under the target name.
// Temporary files are not cleaned up after a crash; names in that form can
// be neither read nor written.
//
// Methods on FS may be called from any goroutine.
type FS struct {
	root      *os.Root
	cfg       FSConfig
	escapeErr error // what root returns for a name that escapes it
}

// uploadMarker marks the names of temporary upload files.
const uploadMarker = ".tftp-upload-"

// NewFS opens the directory cfg.Root for serving. Close the FS to release
// it.
func NewFS(cfg FSConfig) (*FS, error) {
	if cfg.Root == "" {
		return nil, errors.New("tftp: FSConfig.Root is empty")
	}
	root, err := os.OpenRoot(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("tftp: %w", err)
	}
	fsys := &FS{root: root, cfg: cfg}
	// os.Root reports a symbolic link that escapes with an unexported
	// error. Learn it from a lookup that escapes without touching the disk.
	var pe *fs.PathError
	if _, err := root.Lstat(".."); errors.As(err, &pe) {
		fsys.escapeErr = pe.Err
	}
	return fsys, nil
}

// Close releases the root directory. Files and uploads already open stay
// usable, except that [Upload.Commit] fails.
func (fsys *FS) Close() error {
	return fsys.root.Close()
}

// Open opens the regular file name for reading and returns it with its
// size.
func (fsys *FS) Open(name string) (*os.File, int64, error) {
	rel, err := cleanName(name)
	if err != nil {
		return nil, 0, err
	}
	// O_NONBLOCK: opening a FIFO must not block until a writer shows up.
	// It has no effect on reads from the regular files that pass below.
	f, err := fsys.root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, fsys.wrap(err)
	}
	size, err := regularSize(f, name)
	if err != nil {
		return nil, 0, err
	}
	return f, size, nil
}

// regularSize returns the size of an open file, or closes it and refuses
// it if it is not a regular file.
func regularSize(f fs.File, name string) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, fmt.Errorf("tftp: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return 0, fmt.Errorf("%w: %q", ErrNotRegular, name)
	}
	return fi.Size(), nil
}

// Create starts an upload to name. It fails if the FS does not allow
// writes, if name exists and the FS does not allow overwrites, or if name
// is anything but a regular file.
func (fsys *FS) Create(name string) (*Upload, error) {
	if !fsys.cfg.AllowWrite {
		return nil, fmt.Errorf("%w: %q", ErrWriteDisabled, name)
	}
	rel, err := cleanName(name)
	if err != nil {
		return nil, err
	}
	// Refuse early, before the client sends data; Commit checks again.
	fi, err := fsys.root.Lstat(rel)
	switch {
	case err == nil && !fsys.cfg.AllowOverwrite:
		return nil, fmt.Errorf("%w: %q", ErrExists, name)
	case err == nil && !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%w: %q", ErrNotRegular, name)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fsys.wrap(err)
	}
	dir, base := path.Split(rel)
	// Keep the temporary name within NAME_MAX (255) for any base name.
	tmp := dir + "." + base[:min(len(base), 200)] + uploadMarker + rand.Text()
	f, err := fsys.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return nil, fsys.wrap(err)
	}
	return &Upload{fsys: fsys, f: f, tmp: tmp, name: rel, dir: dir}, nil
}

// Upload is a file being received. Write the content, then call Commit to
// move it into place or Abort to discard it. An Upload must not be used
// from several goroutines at once.
type Upload struct {
	fsys *FS
	f    *os.File // nil once committed or aborted
	tmp  string
	name string
	dir  string
}

// Write writes p to the temporary file.
func (u *Upload) Write(p []byte) (int, error) {
	if u.f == nil {
		return 0, fs.ErrClosed
	}
	return u.f.Write(p)
}

// Commit syncs the file to disk and moves it to its name, then syncs the
// directory. Without AllowOverwrite, it publishes the file with a hard
// link, which fails if the name has appeared since Create; this requires a
// file system with hard links. On error, the temporary file is removed;
// if the error is from syncing the directory, the file is already in
// place.
func (u *Upload) Commit() error {
	if u.f == nil {
		return fs.ErrClosed
	}
	f := u.f
	u.f = nil
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		u.fsys.root.Remove(u.tmp)
		return fmt.Errorf("tftp: %w", err)
	}
	root := u.fsys.root
	if u.fsys.cfg.AllowOverwrite {
		if err := root.Rename(u.tmp, u.name); err != nil {
			root.Remove(u.tmp)
			return u.fsys.wrap(err)
		}
	} else {
		if err := root.Link(u.tmp, u.name); err != nil {
			root.Remove(u.tmp)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w: %q: %w", ErrExists, u.name, err)
			}
			return u.fsys.wrap(err)
		}
		// The file is in place; a failure here only leaves a temporary
		// file behind.
		root.Remove(u.tmp)
	}
	d, err := root.Open(path.Clean(u.dir + "."))
	if err != nil {
		return fmt.Errorf("tftp: sync directory: %w", err)
	}
	if err := errors.Join(d.Sync(), d.Close()); err != nil {
		return fmt.Errorf("tftp: sync directory: %w", err)
	}
	return nil
}

// content syncs the upload and opens it for reading, for a replicated
// commit.
func (u *Upload) content() (*os.File, error) {
	if u.f == nil {
		return nil, fs.ErrClosed
	}
	if err := u.f.Sync(); err != nil {
		return nil, fmt.Errorf("tftp: %w", err)
	}
	f, err := u.fsys.root.Open(u.tmp)
	if err != nil {
		return nil, u.fsys.wrap(err)
	}
	return f, nil
}

// Abort discards the upload. It does nothing after Commit or Abort, so it
// can be deferred.
func (u *Upload) Abort() error {
	if u.f == nil {
		return nil
	}
	f := u.f
	u.f = nil
	return errors.Join(f.Close(), u.fsys.root.Remove(u.tmp))
}

// wrap classifies an error from the os.Root.
func (fsys *FS) wrap(err error) error {
	if fsys.escapeErr != nil && errors.Is(err, fsys.escapeErr) {
		return fmt.Errorf("%w: %w", ErrOutsideRoot, err)
	}
	return fmt.Errorf("tftp: %w", err)
}

// maxNameLen bounds the length of a file name: Linux's PATH_MAX.
const maxNameLen = 4096

// cleanName turns a TFTP file name into a clean path relative to the root,
// or refuses it.
func cleanName(name string) (string, error) {
	switch {
	case len(name) > maxNameLen:
		// Before any work on it: a stranger's 65,000-byte name costs no
		// path walk, and its error does not quote it.
		return "", fmt.Errorf("%w: a name of %d bytes (at most %d)", ErrInvalidName, len(name), maxNameLen)
	case strings.IndexByte(name, 0) >= 0:
		return "", fmt.Errorf("%w: %q contains a NUL byte", ErrInvalidName, name)
	case strings.IndexByte(name, '\\') >= 0:
		return "", fmt.Errorf("%w: %q contains a backslash", ErrInvalidName, name)
	}
	rel := strings.TrimLeft(name, "/")
	switch {
	case rel == "":
		return "", fmt.Errorf("%w: %q is empty", ErrInvalidName, name)
	case strings.HasSuffix(rel, "/"):
		return "", fmt.Errorf("%w: %q names a directory", ErrNotRegular, name)
	}
	// Resolve ".." lexically, as in a URL, before any symbolic link is
	// followed: the result is inside the root or refused here.
	rel = path.Clean(rel)
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%w: %q", ErrOutsideRoot, name)
	}
	if base := path.Base(rel); base[0] == '.' && strings.Contains(base, uploadMarker) {
		return "", fmt.Errorf("%w: %q is a temporary upload file", ErrInvalidName, name)
	}
	return rel, nil
}
