package tftp

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// newTree builds
//
//	outside/secret
//	root/hello.txt, root/etc/passwd, root/sub/file, root/dir/
//	root/link-in -> sub/file
//	root/link-out -> ../outside/secret
//	root/link-abs -> <abs>/root/hello.txt
//	root/link-dir-out -> ../outside
//
// and returns the root and outside directories.
func newTree(t *testing.T) (root, outside string) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "root")
	outside = filepath.Join(base, "outside")
	files := map[string]string{
		"outside/secret":    "SECRET",
		"root/hello.txt":    "hello",
		"root/etc/passwd":   "inner passwd",
		"root/sub/file":     "sub file",
		"root/dir/.keep":    "",
		"root/%2e%2e/x.txt": "decoy", // "%2e%2e" is a plain directory name
	}
	for name, content := range files {
		p := filepath.Join(base, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"link-in":      "sub/file",
		"link-out":     "../outside/secret",
		"link-abs":     filepath.Join(root, "hello.txt"),
		"link-dir-out": "../outside",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Skipf("symlinks unavailable: %v", err)
		}
	}
	return root, outside
}

func newFS(t *testing.T, cfg FSConfig) *FS {
	t.Helper()
	fsys, err := NewFS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	return fsys
}

func TestFSOpen(t *testing.T) {
	root, _ := newTree(t)
	fsys := newFS(t, FSConfig{Root: root})
	tests := []struct {
		name     string
		file     string
		want     string // content, if Open succeeds
		wantErr  error
		wantCode ErrorCode
	}{
		{name: "plain", file: "hello.txt", want: "hello"},
		{name: "leading slash", file: "/hello.txt", want: "hello"},
		{name: "leading slashes", file: "///hello.txt", want: "hello"},
		{name: "subdirectory", file: "sub/file", want: "sub file"},
		{name: "dot and dot-dot inside", file: "./sub/../sub/./file", want: "sub file"},
		{name: "absolute path is inside", file: "/etc/passwd", want: "inner passwd"},
		{name: "double-slash absolute path is inside", file: "//etc/passwd", want: "inner passwd"},
		{name: "symlink inside", file: "link-in", want: "sub file"},
		{name: "percent-encoding is literal", file: "%2e%2e/x.txt", want: "decoy"},
		{name: "absolute path missing inside", file: "/etc/shadow", wantErr: fs.ErrNotExist, wantCode: ErrFileNotFound},
		{name: "missing", file: "nope", wantErr: fs.ErrNotExist, wantCode: ErrFileNotFound},
		{name: "percent-encoded dot-dot", file: "%2e%2e/secret", wantErr: fs.ErrNotExist, wantCode: ErrFileNotFound},
		{name: "file as directory", file: "hello.txt/x", wantCode: ErrFileNotFound},
		{name: "dot-dot", file: "../outside/secret", wantErr: ErrOutsideRoot, wantCode: ErrAccessViolation},
		{name: "dot-dot after a directory", file: "a/../../outside/secret", wantErr: ErrOutsideRoot, wantCode: ErrAccessViolation},
		{name: "slash dot-dot", file: "/../../outside/secret", wantErr: ErrOutsideRoot, wantCode: ErrAccessViolation},
		{name: "lone dot-dot", file: "..", wantErr: ErrOutsideRoot, wantCode: ErrAccessViolation},
		{name: "symlink out", file: "link-out", wantErr: ErrOutsideRoot, wantCode: ErrAccessViolation},
		{name: "absolute symlink", file: "link-abs", wantErr: ErrOutsideRoot, wantCode: ErrAccessViolation},
		{name: "through a directory symlink out", file: "link-dir-out/secret", wantErr: ErrOutsideRoot, wantCode: ErrAccessViolation},
		{name: "backslashes", file: `a\..\..\outside\secret`, wantErr: ErrInvalidName, wantCode: ErrAccessViolation},
		{name: "NUL", file: "hello.txt\x00.png", wantErr: ErrInvalidName, wantCode: ErrAccessViolation},
		{name: "empty", file: "", wantErr: ErrInvalidName, wantCode: ErrAccessViolation},
		{name: "only slashes", file: "//", wantErr: ErrInvalidName, wantCode: ErrAccessViolation},
		{name: "directory", file: "dir", wantErr: ErrNotRegular, wantCode: ErrAccessViolation},
		{name: "directory with slash", file: "dir/", wantErr: ErrNotRegular, wantCode: ErrAccessViolation},
		{name: "file with slash", file: "hello.txt/", wantErr: ErrNotRegular, wantCode: ErrAccessViolation},
		{name: "root", file: ".", wantErr: ErrNotRegular, wantCode: ErrAccessViolation},
		{name: "upload temporary", file: "sub/.file.tftp-upload-ABC", wantErr: ErrInvalidName, wantCode: ErrAccessViolation},
		{name: "too long", file: strings.Repeat("a/", 2049), wantErr: ErrInvalidName, wantCode: ErrAccessViolation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, size, err := fsys.Open(tt.file)
			if tt.want != "" {
				if err != nil {
					t.Fatalf("Open(%q) error = %v", tt.file, err)
				}
				defer f.Close()
				b, err := io.ReadAll(f)
				if err != nil || string(b) != tt.want || size != int64(len(tt.want)) {
					t.Fatalf("Open(%q) read %q (size %d), %v; want %q", tt.file, b, size, err, tt.want)
				}
				return
			}
			if err == nil {
				f.Close()
				t.Fatalf("Open(%q) succeeded, want an error", tt.file)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Open(%q) error = %v, want %v", tt.file, err, tt.wantErr)
			}
			if got := ErrorCodeOf(err); got != tt.wantCode {
				t.Errorf("ErrorCodeOf(%v) = %v, want %v", err, got, tt.wantCode)
			}
			if strings.Contains(err.Error(), root) {
				t.Errorf("error %q reveals the root directory", err)
			}
		})
	}
}

func TestNewFS(t *testing.T) {
	if _, err := NewFS(FSConfig{}); err == nil {
		t.Error("NewFS with no root succeeded")
	}
	if _, err := NewFS(FSConfig{Root: filepath.Join(t.TempDir(), "missing")}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("NewFS(missing) error = %v, want fs.ErrNotExist", err)
	}
	fsys := newFS(t, FSConfig{Root: t.TempDir()})
	if fsys.escapeErr == nil {
		t.Fatal("NewFS did not learn the os.Root escape error")
	}
}

// listTree returns the names of all files under dir, sorted.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		names = append(names, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFSCreate(t *testing.T) {
	tests := []struct {
		name      string
		cfg       FSConfig
		file      string
		wantErr   error
		wantCode  ErrorCode
		wantAfter string // content of file after Commit
	}{
		{name: "writes disabled", cfg: FSConfig{}, file: "new", wantErr: ErrWriteDisabled, wantCode: ErrAccessViolation},
		{name: "new file", cfg: FSConfig{AllowWrite: true}, file: "new", wantAfter: "uploaded"},
		{name: "new file in subdirectory", cfg: FSConfig{AllowWrite: true}, file: "/sub/new", wantAfter: "uploaded"},
		{name: "long name", cfg: FSConfig{AllowWrite: true}, file: strings.Repeat("n", 255), wantAfter: "uploaded"},
		{name: "exists", cfg: FSConfig{AllowWrite: true}, file: "hello.txt", wantErr: ErrExists, wantCode: ErrFileExists},
		{name: "overwrite", cfg: FSConfig{AllowWrite: true, AllowOverwrite: true}, file: "hello.txt", wantAfter: "uploaded"},
		{name: "overwrite directory", cfg: FSConfig{AllowWrite: true, AllowOverwrite: true}, file: "dir", wantErr: ErrNotRegular, wantCode: ErrAccessViolation},
		{name: "overwrite symlink", cfg: FSConfig{AllowWrite: true, AllowOverwrite: true}, file: "link-in", wantErr: ErrNotRegular, wantCode: ErrAccessViolation},
		{name: "dangling name exists", cfg: FSConfig{AllowWrite: true}, file: "link-out", wantErr: ErrExists, wantCode: ErrFileExists},
		{name: "missing directory", cfg: FSConfig{AllowWrite: true}, file: "nodir/new", wantErr: fs.ErrNotExist, wantCode: ErrFileNotFound},
		{name: "dot-dot", cfg: FSConfig{AllowWrite: true}, file: "../outside/new", wantErr: ErrOutsideRoot, wantCode: ErrAccessViolation},
		{name: "through a directory symlink out", cfg: FSConfig{AllowWrite: true}, file: "link-dir-out/new", wantErr: ErrOutsideRoot, wantCode: ErrAccessViolation},
		{name: "backslash", cfg: FSConfig{AllowWrite: true}, file: `..\new`, wantErr: ErrInvalidName, wantCode: ErrAccessViolation},
		{name: "temporary name", cfg: FSConfig{AllowWrite: true}, file: ".x.tftp-upload-Y", wantErr: ErrInvalidName, wantCode: ErrAccessViolation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, outside := newTree(t)
			tt.cfg.Root = root
			fsys := newFS(t, tt.cfg)
			before, beforeOut := listTree(t, root), listTree(t, outside)
			u, err := fsys.Create(tt.file)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || ErrorCodeOf(err) != tt.wantCode {
					t.Fatalf("Create(%q) error = %v (code %v), want %v (code %v)", tt.file, err, ErrorCodeOf(err), tt.wantErr, tt.wantCode)
				}
				if after := listTree(t, root); !slices.Equal(after, before) {
					t.Fatalf("refused Create changed the root: %q, want %q", after, before)
				}
				if after := listTree(t, outside); !slices.Equal(after, beforeOut) {
					t.Fatalf("refused Create changed outside the root: %q", after)
				}
				return
			}
			if err != nil {
				t.Fatalf("Create(%q) error = %v", tt.file, err)
			}
			if _, err := u.Write([]byte("uploaded")); err != nil {
				t.Fatal(err)
			}
			if err := u.Commit(); err != nil {
				t.Fatalf("Commit() error = %v", err)
			}
			if got := readFile(t, filepath.Join(root, tt.file)); got != tt.wantAfter {
				t.Fatalf("after Commit, file holds %q, want %q", got, tt.wantAfter)
			}
			for _, name := range listTree(t, root) {
				if strings.Contains(name, uploadMarker) {
					t.Fatalf("temporary file %q left behind", name)
				}
			}
			if err := u.Commit(); !errors.Is(err, fs.ErrClosed) {
				t.Errorf("second Commit() error = %v, want fs.ErrClosed", err)
			}
			if _, err := u.Write([]byte("x")); !errors.Is(err, fs.ErrClosed) {
				t.Errorf("Write after Commit error = %v, want fs.ErrClosed", err)
			}
			if err := u.Abort(); err != nil {
				t.Errorf("Abort after Commit error = %v", err)
			}
		})
	}
}

func TestUploadInvisibleUntilCommit(t *testing.T) {
	root, _ := newTree(t)
	fsys := newFS(t, FSConfig{Root: root, AllowWrite: true})
	u, err := fsys.Create("sub/new")
	if err != nil {
		t.Fatal(err)
	}
	u.Write([]byte("partial"))
	if _, _, err := fsys.Open("sub/new"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open before Commit error = %v, want fs.ErrNotExist", err)
	}
	var tmp string
	for _, name := range listTree(t, root) {
		if strings.Contains(name, uploadMarker) {
			tmp = name
		}
	}
	if !strings.HasPrefix(tmp, "sub/.new"+uploadMarker) {
		t.Fatalf("temporary file = %q, want sub/.new%s...", tmp, uploadMarker)
	}
	if _, _, err := fsys.Open(tmp); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("Open(%q) error = %v, want ErrInvalidName", tmp, err)
	}
	if _, err := fsys.Create(tmp); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("Create(%q) error = %v, want ErrInvalidName", tmp, err)
	}
}

func TestUploadAbort(t *testing.T) {
	root, _ := newTree(t)
	fsys := newFS(t, FSConfig{Root: root, AllowWrite: true})
	before := listTree(t, root)
	u, err := fsys.Create("new")
	if err != nil {
		t.Fatal(err)
	}
	u.Write([]byte("partial"))
	if err := u.Abort(); err != nil {
		t.Fatalf("Abort() error = %v", err)
	}
	if after := listTree(t, root); !slices.Equal(after, before) {
		t.Fatalf("after Abort, root holds %q, want %q", after, before)
	}
	if err := u.Abort(); err != nil {
		t.Errorf("second Abort() error = %v", err)
	}
	if err := u.Commit(); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("Commit after Abort error = %v, want fs.ErrClosed", err)
	}
}

// TestUploadCommitRace checks that an upload never replaces a file created
// by someone else between Create and Commit when overwrites are off.
func TestUploadCommitRace(t *testing.T) {
	root, _ := newTree(t)
	fsys := newFS(t, FSConfig{Root: root, AllowWrite: true})
	u, err := fsys.Create("new")
	if err != nil {
		t.Fatal(err)
	}
	u.Write([]byte("mine"))
	if err := os.WriteFile(filepath.Join(root, "new"), []byte("theirs"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = u.Commit()
	if !errors.Is(err, ErrExists) || ErrorCodeOf(err) != ErrFileExists {
		t.Fatalf("Commit() error = %v, want ErrExists", err)
	}
	if got := readFile(t, filepath.Join(root, "new")); got != "theirs" {
		t.Fatalf("file holds %q, want the other writer's content", got)
	}
	for _, name := range listTree(t, root) {
		if strings.Contains(name, uploadMarker) {
			t.Fatalf("temporary file %q left behind", name)
		}
	}
}
