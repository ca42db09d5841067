package nvshmem

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// With a copy loaded already, find returns it whatever else the search
// would find, and an explicit setting naming another file is a one-line
// error naming both.
func TestFindUsesTheLoadedCopy(t *testing.T) {
	root := t.TempDir()
	tree(t, root, "torch/nvshmem/lib/"+LibName, "other/lib/"+LibName, "ld/"+LibName, "empty/lib/x")
	loaded := filepath.Join(root, "torch/nvshmem/lib", LibName)
	other := filepath.Join(root, "other/lib", LibName)
	link := filepath.Join(root, "link.so")
	if err := os.Symlink(loaded, link); err != nil {
		t.Fatal(err)
	}
	find := func(env map[string]string) (string, error) {
		env["LD_LIBRARY_PATH"] = root + "/ld"
		f := testFinder(root, env)
		f.loaded = func() (string, error) { return loaded, nil }
		return f.find()
	}
	for _, env := range []map[string]string{
		{},
		{"MOERUN_NVSHMEM_LIB": link},
		{"MOERUN_NVSHMEM_LIB": loaded, "NVSHMEM_HOME": root + "/other"},
		{"NVSHMEM_HOME": root + "/torch/nvshmem"},
	} {
		if got, err := find(env); got != loaded || err != nil {
			t.Errorf("%v: found %q, %v; want %s", env, got, err, loaded)
		}
	}
	for _, c := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"MOERUN_NVSHMEM_LIB": other}, []string{"MOERUN_NVSHMEM_LIB=" + other, loaded, "set MOERUN_NVSHMEM_LIB=" + loaded}},
		{map[string]string{"NVSHMEM_HOME": root + "/other"}, []string{"NVSHMEM_HOME=" + root + "/other names " + other, loaded, "set MOERUN_NVSHMEM_LIB=" + loaded}},
		{map[string]string{"NVSHMEM_HOME": root + "/empty"}, []string{"NVSHMEM_HOME=" + root + "/empty: no " + LibName, loaded}},
	} {
		_, err := find(c.env)
		if err == nil {
			t.Errorf("%v: no error", c.env)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error has several lines: %q", c.env, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q lacks %q", c.env, err, w)
			}
		}
	}
}

func TestMapsNameTheHostLibraryCopies(t *testing.T) {
	maps := `55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1234 /usr/bin/python3.11
7f0000000000-7f0000100000 r--p 00000000 fd:01 777 /a/torch venv/nvidia/nvshmem/lib/libnvshmem_host.so.3
7f0000100000-7f0000200000 r-xp 00100000 fd:01 777 /a/torch venv/nvidia/nvshmem/lib/libnvshmem_host.so.3
7f0000300000-7f0000301000 rw-p 00000000 00:00 0 
7f0000400000-7f0000500000 r-xp 00000000 fd:01 778 /a/torch venv/nvidia/nvshmem/lib/nvshmem_bootstrap_uid.so.3
7f0000600000-7f0000700000 r-xp 00000000 fd:02 991 /tmp/x/lib/libnvshmem_host.so.3 (deleted)
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
garbage line
`
	ms := parseMaps(maps)
	if len(ms) != 7 {
		t.Fatalf("read %d mappings: %+v", len(ms), ms)
	}
	if p := mappedFile(ms, 0x7f0000180000); p != "/a/torch venv/nvidia/nvshmem/lib/libnvshmem_host.so.3" {
		t.Errorf("mappedFile = %q", p)
	}
	if p := mappedFile(ms, 0x7f0000300800); p != "" {
		t.Errorf("anonymous mapping: %q", p)
	}
	copies := hostCopies(ms)
	if len(copies) != 2 || copies[0].inode != 777 || copies[1].path != "/tmp/x/lib/libnvshmem_host.so.3" || !copies[1].deleted {
		t.Fatalf("hostCopies = %+v", copies)
	}
	if err := oneCopy(copies[:1], "x"); err != nil {
		t.Errorf("one copy: %v", err)
	}
	err := oneCopy(copies, "/tmp/x/lib/libnvshmem_host.so.3")
	if err == nil || !strings.Contains(err.Error(), "2 copies of the NVSHMEM host library") ||
		!strings.Contains(err.Error(), "/tmp/x/lib/libnvshmem_host.so.3 (deleted)") ||
		!strings.Contains(err.Error(), "MOERUN_NVSHMEM_LIB=/a/torch venv/nvidia/nvshmem/lib/libnvshmem_host.so.3") {
		t.Errorf("two copies: %v", err)
	}
}

// TestFindReturnsTheCopyAlreadyLoaded loads the wheel's library with
// RTLD_GLOBAL first, as import torch does, with a copy of it (another file)
// where the search would find it first; Find must return the loaded one,
// refuse explicit settings naming the copy, and Load of the copy must fail.
// It runs in a child process: a library loaded stays loaded.
func TestFindReturnsTheCopyAlreadyLoaded(t *testing.T) {
	wheel := filepath.Join(wheelDir(t), "lib", LibName)
	if os.Getenv("MOERUN_NVSHMEM_TEST_CHILD") != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFindReturnsTheCopyAlreadyLoaded$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "MOERUN_NVSHMEM_TEST_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	if p, err := loadedLib(); p != "" || err != nil {
		t.Fatalf("before loading: loadedLib = %q, %v", p, err)
	}
	// The copy, where a search without the check finds it first.
	home := t.TempDir()
	b, err := os.ReadFile(wheel)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(home, "lib", LibName)
	if err := os.MkdirAll(filepath.Dir(cp), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	unsetEnv(t, "MOERUN_NVSHMEM_LIB")
	unsetEnv(t, "NVSHMEM_HOME")
	t.Setenv("LD_LIBRARY_PATH", filepath.Dir(cp))
	if p, err := Find(); p != cp || err != nil {
		t.Fatalf("nothing loaded: Find = %q, %v; want the copy %s", p, err, cp)
	}

	if err := dlopenGlobal(wheel); err != nil {
		t.Fatal(err)
	}
	p, err := Find()
	if err != nil || !sameFile(p, wheel) {
		t.Fatalf("Find = %q, %v; want the loaded %s", p, err, wheel)
	}
	t.Setenv("MOERUN_NVSHMEM_LIB", wheel)
	if p, err := Find(); err != nil || !sameFile(p, wheel) {
		t.Errorf("MOERUN_NVSHMEM_LIB naming the loaded library: %q, %v", p, err)
	}
	t.Setenv("MOERUN_NVSHMEM_LIB", cp)
	if _, err := Find(); err == nil || !strings.Contains(err.Error(), "MOERUN_NVSHMEM_LIB="+cp) || !strings.Contains(err.Error(), p) {
		t.Errorf("MOERUN_NVSHMEM_LIB naming the copy: %v", err)
	}
	unsetEnv(t, "MOERUN_NVSHMEM_LIB")
	t.Setenv("NVSHMEM_HOME", home)
	if _, err := Find(); err == nil || !strings.Contains(err.Error(), "NVSHMEM_HOME="+home+" names "+cp) || !strings.Contains(err.Error(), p) {
		t.Errorf("NVSHMEM_HOME naming the copy: %v", err)
	}

	if l, err := Load(p); err != nil || l == nil {
		t.Errorf("Load of the loaded library: %v", err)
	}
	_, err = Load(cp)
	if err == nil || !strings.Contains(err.Error(), "2 copies of the NVSHMEM host library") || !strings.Contains(err.Error(), cp) {
		t.Errorf("Load of a second copy: %v", err)
	}
	t.Logf("Load of a second copy: %v", err)
}
