package nvshmem

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tree makes files (with parent folders) under root; names ending in
// "python3" are made executable.
func tree(t *testing.T, root string, files ...string) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(f, "python3") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// testFinder is a finder on a fake root with the given environment, no
// running binary and a Python that knows no NVSHMEM.
func testFinder(root string, env map[string]string) finder {
	return finder{
		getenv: func(k string) string { return env[k] },
		root:   root,
		home:   filepath.Join(root, "home"),
		askPython: func(string) (string, error) {
			return "", errors.New("ModuleNotFoundError: No module named 'nvidia'")
		},
	}
}

func TestFindSearchOrder(t *testing.T) {
	const lib = "/" + LibName
	cases := []struct {
		name  string
		files []string
		env   map[string]string // values may start with ROOT
		exe   string            // exeDir under ROOT, or ""
		want  string            // path under ROOT
	}{
		{
			name:  "MOERUN_NVSHMEM_LIB wins over NVSHMEM_HOME and the wheel",
			files: []string{"custom/my.so", "nv/lib" + lib, "usr/lib/python3.12/dist-packages/nvidia/nvshmem/lib" + lib},
			env:   map[string]string{"MOERUN_NVSHMEM_LIB": "ROOT/custom/my.so", "NVSHMEM_HOME": "ROOT/nv"},
			want:  "custom/my.so",
		},
		{
			name:  "NVSHMEM_HOME wins over the binary's folder",
			files: []string{"nv/lib" + lib, "bin" + lib},
			env:   map[string]string{"NVSHMEM_HOME": "ROOT/nv"},
			exe:   "bin",
			want:  "nv/lib" + lib,
		},
		{
			name:  "NVSHMEM_HOME with an unversioned library",
			files: []string{"nv/lib/libnvshmem_host.so"},
			env:   map[string]string{"NVSHMEM_HOME": "ROOT/nv"},
			want:  "nv/lib/libnvshmem_host.so",
		},
		{
			name:  "beside the binary, in lib/",
			files: []string{"app/lib" + lib, "ld" + lib},
			env:   map[string]string{"LD_LIBRARY_PATH": "ROOT/ld"},
			exe:   "app",
			want:  "app/lib" + lib,
		},
		{
			name:  "a wheel unpacked beside the binary",
			files: []string{"app/nvidia/nvshmem/lib" + lib},
			exe:   "app",
			want:  "app/nvidia/nvshmem/lib" + lib,
		},
		{
			name:  "LD_LIBRARY_PATH before site-packages",
			files: []string{"b" + lib, "usr/lib/python3.12/dist-packages/nvidia/nvshmem/lib" + lib},
			env:   map[string]string{"LD_LIBRARY_PATH": "ROOT/a:ROOT/b"},
			want:  "b" + lib,
		},
		{
			name:  "active virtualenv first among wheels",
			files: []string{"venv/lib/python3.11/site-packages/nvidia/nvshmem/lib" + lib, "usr/local/lib/python3.12/dist-packages/nvidia/nvshmem/lib" + lib},
			env:   map[string]string{"VIRTUAL_ENV": "ROOT/venv"},
			want:  "venv/lib/python3.11/site-packages/nvidia/nvshmem/lib" + lib,
		},
		{
			name:  "user site-packages",
			files: []string{"home/.local/lib/python3.10/site-packages/nvidia/nvshmem/lib" + lib},
			want:  "home/.local/lib/python3.10/site-packages/nvidia/nvshmem/lib" + lib,
		},
		{
			name:  "system python, newest version first",
			files: []string{"usr/lib/python3.9/dist-packages/nvidia/nvshmem/lib" + lib, "usr/lib/python3.12/dist-packages/nvidia/nvshmem/lib" + lib},
			want:  "usr/lib/python3.12/dist-packages/nvidia/nvshmem/lib" + lib,
		},
		{
			name:  "a venv under /opt (the GPU machine's /opt/torch/.venv)",
			files: []string{"opt/torch/.venv/lib/python3.12/site-packages/nvidia/nvshmem/lib" + lib},
			want:  "opt/torch/.venv/lib/python3.12/site-packages/nvidia/nvshmem/lib" + lib,
		},
		{
			name:  "Debian's libnvshmem3 package",
			files: []string{"usr/lib/x86_64-linux-gnu/nvshmem/12" + lib, "usr/lib/x86_64-linux-gnu/nvshmem/13" + lib},
			want:  "usr/lib/x86_64-linux-gnu/nvshmem/13" + lib,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			tree(t, root, c.files...)
			env := map[string]string{}
			for k, v := range c.env {
				env[k] = strings.ReplaceAll(v, "ROOT", root)
			}
			f := testFinder(root, env)
			if c.exe != "" {
				f.exeDir = filepath.Join(root, c.exe)
			}
			got, err := f.find()
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(root, c.want); got != want {
				t.Errorf("found %s, want %s", got, want)
			}
		})
	}
}

func TestFindExplicitSettingsThatMissAreErrors(t *testing.T) {
	root := t.TempDir()
	tree(t, root, "usr/lib/python3.12/dist-packages/nvidia/nvshmem/lib/"+LibName)

	_, err := testFinder(root, map[string]string{"MOERUN_NVSHMEM_LIB": root + "/nope.so"}).find()
	if err == nil || !strings.Contains(err.Error(), "MOERUN_NVSHMEM_LIB="+root+"/nope.so: no such file") {
		t.Errorf("MOERUN_NVSHMEM_LIB: %v", err)
	}
	_, err = testFinder(root, map[string]string{"NVSHMEM_HOME": root + "/nv"}).find()
	if err == nil || !strings.Contains(err.Error(), "NVSHMEM_HOME="+root+"/nv: no "+LibName) {
		t.Errorf("NVSHMEM_HOME: %v", err)
	}
}

func TestFindAsksPythonLast(t *testing.T) {
	root := t.TempDir()
	tree(t, root, "pybin/python3", "wheel/nvidia/nvshmem/lib/"+LibName)
	f := testFinder(root, map[string]string{"PATH": root + "/pybin"})
	var asked []string
	f.askPython = func(py string) (string, error) {
		asked = append(asked, py)
		return filepath.Join(root, "wheel/nvidia/nvshmem"), nil
	}
	got, err := f.find()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "wheel/nvidia/nvshmem/lib", LibName); got != want {
		t.Errorf("found %s, want %s", got, want)
	}
	if len(asked) != 1 || asked[0] != filepath.Join(root, "pybin/python3") {
		t.Errorf("asked %v", asked)
	}
}

func TestFindFailureListsPlacesAndNamesNVSHMEMHome(t *testing.T) {
	root := t.TempDir()
	tree(t, root, "opt/torch/.venv/bin/python3")
	_, err := testFinder(root, map[string]string{"LD_LIBRARY_PATH": "/x"}).find()
	if err == nil {
		t.Fatal("found a library in an empty tree")
	}
	msg := err.Error()
	for _, want := range []string{
		"NVSHMEM host library libnvshmem_host.so.3 not found; looked in:",
		"$MOERUN_NVSHMEM_LIB (unset)",
		"$NVSHMEM_HOME/lib (unset)",
		"$LD_LIBRARY_PATH: /x",
		root + "/opt/*/.venv/lib/python3*/site-packages/nvidia/nvshmem/lib",
		root + "/usr/lib/python3*/dist-packages/nvidia/nvshmem/lib",
		root + "/opt/torch/.venv/bin/python3: ModuleNotFoundError",
		"set NVSHMEM_HOME",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
}

func TestCompareNaturalOrdersVersions(t *testing.T) {
	got := []string{"python3.9", "python3.12", "python3.11"}
	slices.SortFunc(got, func(a, b string) int { return -compareNatural(a, b) })
	if want := []string{"python3.12", "python3.11", "python3.9"}; !slices.Equal(got, want) {
		t.Errorf("newest first = %v, want %v", got, want)
	}
}
