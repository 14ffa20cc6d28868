// Computes kstatus for status fixtures of Slipway objects and checks the result.
//
// kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status) is what Flux's kustomize-controller uses
// for `wait: true` and `healthChecks`, and what `kpt live` and cli-utils based tools use: a
// Release must be InProgress while it rolls out or waits at a gate, Current once Ready, and
// Failed once Stalled.
//
// Every file in tests/fixtures/kstatus/*.yaml holds one object and starts with a header line
//
//	# expect: InProgress|Current|Failed
//
// Run with `go test ./...` in this directory (or `cargo test --test kstatus`).
package kstatus

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// fixtureDir is relative to this package: go test runs in the package directory.
const fixtureDir = "../../fixtures/kstatus"

// releasePhases lists every value of Release status.phase; each must have a fixture so a
// phase added to the operator without one (or a fixture removed) fails here.
var releasePhases = []string{
	"Pending", "AwaitingPromotion", "AwaitingApproval", "Migrating", "RollingOut",
	"Verifying", "Succeeded", "Failed", "RolledBack", "Frozen",
}

var allowed = map[status.Status]bool{
	status.InProgressStatus: true,
	status.CurrentStatus:    true,
	status.FailedStatus:     true,
}

type fixture struct {
	name   string
	expect status.Status
	obj    *unstructured.Unstructured
}

// expectHeader returns the value of the first `# expect: X` line of a fixture.
func expectHeader(data []byte) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "#"); ok {
			if v, ok := strings.CutPrefix(strings.TrimSpace(rest), "expect:"); ok {
				return strings.TrimSpace(v), true
			}
			continue
		}
		if line != "" {
			break // the header must come before the object
		}
	}
	return "", false
}

func loadFixtures(t *testing.T) []fixture {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(fixtureDir, "*.yaml"))
	if err != nil {
		t.Fatalf("listing %s: %v", fixtureDir, err)
	}
	if len(paths) == 0 {
		t.Fatalf("no fixtures in %s", fixtureDir)
	}
	sort.Strings(paths)
	var out []fixture
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("reading %s: %v", p, err)
		}
		want, ok := expectHeader(data)
		if !ok {
			t.Fatalf("%s: no `# expect: InProgress|Current|Failed` header line", p)
		}
		if !allowed[status.Status(want)] {
			t.Fatalf("%s: expect %q is not one of InProgress, Current, Failed", p, want)
		}
		if bytes.Contains(data, []byte("\n---")) {
			t.Fatalf("%s: one object per fixture", p)
		}
		js, err := yaml.YAMLToJSON(data)
		if err != nil {
			t.Fatalf("%s: parsing YAML: %v", p, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			t.Fatalf("%s: not a Kubernetes object: %v", p, err)
		}
		if u.GetAPIVersion() != "slipway.dev/v1alpha1" {
			t.Fatalf("%s: apiVersion %q, want slipway.dev/v1alpha1", p, u.GetAPIVersion())
		}
		out = append(out, fixture{
			name:   strings.TrimSuffix(filepath.Base(p), ".yaml"),
			expect: status.Status(want),
			obj:    u,
		})
	}
	return out
}

func TestKstatusOfSlipwayObjects(t *testing.T) {
	fixtures := loadFixtures(t)
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			phase, _, _ := unstructured.NestedString(f.obj.Object, "status", "phase")
			res, err := status.Compute(f.obj)
			if err != nil {
				t.Fatalf("status.Compute: %v", err)
			}
			if res.Status != f.expect {
				t.Fatalf("%s %s (phase %q): kstatus %s (%q), want %s",
					f.obj.GetKind(), f.obj.GetName(), phase, res.Status, res.Message, f.expect)
			}
			t.Logf("%s (phase %q) -> %s: %s", f.obj.GetKind(), phase, res.Status, res.Message)
		})
	}
}

// Every Release phase has a fixture whose status is current (observedGeneration ==
// generation), so the mapping of phases to kstatus is fully covered.
func TestEveryReleasePhaseHasAFixture(t *testing.T) {
	seen := map[string]status.Status{}
	for _, f := range loadFixtures(t) {
		if f.obj.GetKind() != "Release" {
			continue
		}
		phase, found, _ := unstructured.NestedString(f.obj.Object, "status", "phase")
		og, ogFound, _ := unstructured.NestedInt64(f.obj.Object, "status", "observedGeneration")
		if found && ogFound && og == f.obj.GetGeneration() {
			seen[phase] = f.expect
		}
	}
	for _, p := range releasePhases {
		if _, ok := seen[p]; !ok {
			t.Errorf("no Release fixture with status.phase %s and an up-to-date observedGeneration", p)
		}
	}
	for p := range seen {
		if !contains(releasePhases, p) {
			t.Errorf("Release fixture with unknown status.phase %q", p)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
