package bootstrap

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/transport"
)

// IDSize is the size of the opaque id that BroadcastID carries (the size of
// an NVSHMEM unique id).
const IDSize = 128

// idFrame is what BroadcastID broadcasts: a status word (0 ok, else failed),
// the id, and on failure as much of rank 0's error message as fits.
const (
	idStatusOK   = 0
	idStatusFail = 1
	idMsgSize    = 384
	idFrameSize  = 4 + IDSize + 2 + idMsgSize
)

// BroadcastID has rank 0 call mk and gives its result, an opaque 128-byte
// id (the NVSHMEM unique id), to every rank. Every rank must call it; only
// rank 0 calls mk. If mk fails on rank 0, every rank returns an error
// that carries rank 0's message: the broadcast frame starts with a status
// word, so no rank is left waiting for an id that will never come.
func BroadcastID(c transport.Comm, mk func() ([IDSize]byte, error)) ([IDSize]byte, error) {
	var id [IDSize]byte
	frame := make([]byte, idFrameSize)
	if c.Rank() == 0 {
		var err error
		if mk == nil {
			err = errors.New("no id maker given")
		} else {
			id, err = safeMake(mk)
		}
		if err != nil {
			msg := err.Error()
			if len(msg) > idMsgSize {
				msg = strings.ToValidUTF8(msg[:idMsgSize-3], "") + "..."
			}
			binary.LittleEndian.PutUint32(frame[0:], idStatusFail)
			binary.LittleEndian.PutUint16(frame[4+IDSize:], uint16(len(msg)))
			copy(frame[4+IDSize+2:], msg)
		} else {
			binary.LittleEndian.PutUint32(frame[0:], idStatusOK)
			copy(frame[4:], id[:])
		}
	}
	if err := c.Bcast(0, frame); err != nil {
		return [IDSize]byte{}, fmt.Errorf("broadcast id from rank 0: %w", err)
	}
	switch st := binary.LittleEndian.Uint32(frame[0:]); st {
	case idStatusOK:
	case idStatusFail:
		n := int(binary.LittleEndian.Uint16(frame[4+IDSize:]))
		n = min(n, idMsgSize)
		msg := string(frame[4+IDSize+2 : 4+IDSize+2+n])
		if c.Rank() == 0 {
			return [IDSize]byte{}, fmt.Errorf("make id on rank 0: %s", msg)
		}
		return [IDSize]byte{}, fmt.Errorf("rank %d: rank 0 failed to make the id: %s", c.Rank(), msg)
	default:
		return [IDSize]byte{}, fmt.Errorf("rank %d: broadcast id: bad status word %d from rank 0", c.Rank(), st)
	}
	copy(id[:], frame[4:4+IDSize])
	return id, nil
}

// safeMake calls mk, turning a panic into an error so that rank 0 still
// broadcasts a failure status instead of leaving its peers waiting.
func safeMake(mk func() ([IDSize]byte, error)) (id [IDSize]byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return mk()
}

// agreement is what CheckAgreement compares across ranks.
type agreement struct {
	Version string
	Static  config.Static
}

// GatherJSON all-gathers v from every rank, encoded as JSON, and returns the
// values indexed by rank; what names the step in errors. Collective.
func GatherJSON[T any](c transport.Comm, what string, v T) ([]T, error) {
	mine, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%s: encode: %w", what, err)
	}
	all, err := c.AllGather(mine)
	if err != nil {
		return nil, fmt.Errorf("%s between ranks: %w", what, err)
	}
	got := make([]T, len(all))
	for r, b := range all {
		if err := json.Unmarshal(b, &got[r]); err != nil {
			return nil, fmt.Errorf("%s: rank %d sent an unreadable value (%q): %w", what, r, b, err)
		}
	}
	return got, nil
}

// CheckAgreement all-gathers every rank's static configuration and version
// and compares them with rank 0's. Every rank gets the same answer: nil, or
// an error naming the first rank that differs and how, for example
// "rank 2 runs hidden=1024, rank 0 runs hidden=2048".
func CheckAgreement(c transport.Comm, st config.Static, ver string) error {
	got, err := GatherJSON(c, "check agreement", agreement{Version: ver, Static: st})
	if err != nil {
		return err
	}
	var first error
	differ := 0
	for r := 1; r < len(got); r++ {
		if e := compareAgreement(r, got[r], got[0]); e != nil {
			if first == nil {
				first = e
			}
			differ++
		}
	}
	if first == nil {
		return nil
	}
	if differ > 1 {
		return fmt.Errorf("%w (and %d more ranks differ from rank 0)", first, differ-1)
	}
	return first
}

// compareAgreement names how rank r's a differs from rank 0's ref.
func compareAgreement(r int, a, ref agreement) error {
	if a.Version != ref.Version {
		return fmt.Errorf("rank %d runs version %s, rank 0 runs %s: every rank must run the same moerun build", r, a.Version, ref.Version)
	}
	var m Mismatch
	s, t := a.Static, ref.Static
	m.Field("hidden", s.Hidden, t.Hidden)
	m.Field("ffn-hidden", s.FFNHidden, t.FFNHidden)
	m.Field("experts", s.Experts, t.Experts)
	m.Field("topk", s.TopK, t.TopK)
	m.Field("max-tokens", s.MaxTokens, t.MaxTokens)
	m.Field("ffn", s.FFN, t.FFN)
	m.Field("dtype", s.DType, t.DType)
	m.Field("seed", s.Seed, t.Seed)
	return m.Err(r, "configuration")
}

// Mismatch collects how one rank's settings differ from rank 0's, each side
// as "name=value" words, for one error that names them all.
type Mismatch struct {
	Mine, Rank0 []string // this rank's words, rank 0's words
}

// Field notes name when this rank's value mine differs from rank 0's.
func (m *Mismatch) Field(name string, mine, rank0 any) {
	if mine != rank0 {
		m.Mine = append(m.Mine, fmt.Sprintf("%s=%v", name, mine))
		m.Rank0 = append(m.Rank0, fmt.Sprintf("%s=%v", name, rank0))
	}
}

// Err is nil without differences, else "rank r runs ..., rank 0 runs ...:
// every rank must be given the same <what>".
func (m *Mismatch) Err(r int, what string) error {
	if len(m.Mine) == 0 {
		return nil
	}
	return fmt.Errorf("rank %d runs %s, rank 0 runs %s: every rank must be given the same %s",
		r, strings.Join(m.Mine, " "), strings.Join(m.Rank0, " "), what)
}

// CheckUniqueGPU all-gathers every rank's host and GPU UUID and returns an
// error naming the first two ranks that would share one GPU (for example
// when every rank was given the same CUDA_VISIBLE_DEVICES). Every rank gets
// the same answer.
func CheckUniqueGPU(c transport.Comm, host, uuid string) error {
	all, err := c.AllGather([]byte(host + "\x00" + uuid))
	if err != nil {
		return fmt.Errorf("check GPU assignment: %w", err)
	}
	seen := map[string]int{}
	for r, b := range all {
		h, u, _ := strings.Cut(string(b), "\x00")
		key := h + "\x00" + u
		if prev, dup := seen[key]; dup {
			return fmt.Errorf("ranks %d and %d would both use GPU %s on host %s: give each rank its own GPU (check CUDA_VISIBLE_DEVICES and the launcher's GPU binding)", prev, r, u, h)
		}
		seen[key] = r
	}
	return nil
}
