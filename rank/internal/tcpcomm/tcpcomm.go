// Package tcpcomm is a transport.Comm over TCP for jobs that were not started
// by MPI (a driver launched by torchrun, say): rank 0's process makes a
// 128-byte id that holds its listening address, the driver hands it to every
// rank by its own means, and every rank connects with it.
//
// The ranks form a star around rank 0: each collective sends every rank's
// contribution to rank 0, which combines them in rank order and answers each
// rank. It carries host-side control traffic and the CPU backend's rows; it
// is not built for bandwidth. Every wait is bounded by the timeout given to
// Connect; after a failed collective the communicator is unusable and every
// later call returns the first error.
package tcpcomm

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/moerun/moerun/internal/transport"
)

// IDSize is the size of an id, the size of an NVSHMEM or NCCL unique id.
const IDSize = 128

// ID is what rank 0 makes and every rank connects with: a magic word, a
// random nonce that names the job, and rank 0's address.
type ID [IDSize]byte

var magic = [8]byte{'m', 'o', 'e', 'r', 'u', 'n', 'i', 'd'}

const (
	idVersion  = 1
	nonceSize  = 16
	maxAddrLen = IDSize - 8 - 4 - nonceSize - 1
)

// AddrEnv names the variable that sets the address rank 0 listens on and
// advertises (host, or host:port); by default it listens on every interface
// and advertises its first non-loopback IPv4 address (127.0.0.1 if none).
const AddrEnv = "MOERUN_BOOTSTRAP_ADDR"

// listeners holds the listeners of the ids this process made, by nonce,
// until rank 0 connects with one.
var (
	mu        sync.Mutex
	listeners = map[[nonceSize]byte]net.Listener{}
)

// NewID starts listening for the ranks of a new job and returns its id. Only
// the process that will be rank 0 calls it, and rank 0 must connect with the
// id in this same process.
func NewID() (ID, error) {
	var id ID
	listen, advertise, err := addresses(os.Getenv(AddrEnv))
	if err != nil {
		return id, err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return id, fmt.Errorf("listen for the ranks on %s: %w", listen, err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	addr := net.JoinHostPort(advertise, port)
	if len(addr) > maxAddrLen {
		ln.Close()
		return id, fmt.Errorf("address %q is longer than the %d bytes an id holds", addr, maxAddrLen)
	}
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		ln.Close()
		return id, fmt.Errorf("make a nonce: %w", err)
	}
	copy(id[0:], magic[:])
	binary.LittleEndian.PutUint32(id[8:], idVersion)
	copy(id[12:], nonce[:])
	id[12+nonceSize] = byte(len(addr))
	copy(id[13+nonceSize:], addr)
	mu.Lock()
	listeners[nonce] = ln
	mu.Unlock()
	return id, nil
}

// parse returns the id's nonce and address.
func (id ID) parse() (nonce [nonceSize]byte, addr string, err error) {
	if !bytes.Equal(id[:8], magic[:]) {
		return nonce, "", errors.New("not a moerun id (bad magic): pass the bytes that moerun's unique-id call made on rank 0, unchanged")
	}
	if v := binary.LittleEndian.Uint32(id[8:]); v != idVersion {
		return nonce, "", fmt.Errorf("id version %d, this build reads version %d: every rank must run the same moerun build", v, idVersion)
	}
	copy(nonce[:], id[12:])
	n := int(id[12+nonceSize])
	if n == 0 || n > maxAddrLen {
		return nonce, "", fmt.Errorf("id holds a bad address length %d", n)
	}
	return nonce, string(id[13+nonceSize : 13+nonceSize+n]), nil
}

// addresses picks where to listen and what to advertise.
func addresses(env string) (listen, advertise string, err error) {
	if env != "" {
		host, port, err := net.SplitHostPort(env)
		if err != nil {
			host, port = env, "0"
		}
		if host == "" {
			return "", "", fmt.Errorf("%s=%q names no host", AddrEnv, env)
		}
		return net.JoinHostPort(host, port), host, nil
	}
	return ":0", firstIPv4(), nil
}

func firstIPv4() string {
	ifs, err := net.Interfaces()
	if err != nil {
		return "127.0.0.1"
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
				return n.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

// Comm is one rank's end of the star. Its methods must not be called
// concurrently.
type Comm struct {
	rank, size int
	timeout    time.Duration
	conns      []net.Conn // rank 0: conns[r] to rank r (conns[0] nil); others: conns[0]
	seq        uint32
	broken     error
	closed     bool
}

var _ transport.Comm = (*Comm)(nil)

// hello is what a rank sends rank 0 when it connects.
const helloSize = 8 + nonceSize + 4 + 4

// Connect joins the job of id as rank of size ranks; every rank calls it,
// rank 0 in the process that made id. It returns once every rank has
// connected, or an error after timeout (0: transport.DefaultTimeout).
func Connect(id ID, rank, size int, timeout time.Duration) (*Comm, error) {
	if timeout <= 0 {
		timeout = transport.DefaultTimeout
	}
	if size < 1 || rank < 0 || rank >= size {
		return nil, fmt.Errorf("rank %d of %d: want 0 <= rank < size", rank, size)
	}
	nonce, addr, err := id.parse()
	if err != nil {
		return nil, err
	}
	c := &Comm{rank: rank, size: size, timeout: timeout}
	deadline := time.Now().Add(timeout)
	if rank == 0 {
		mu.Lock()
		ln, ok := listeners[nonce]
		delete(listeners, nonce)
		mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("rank 0: this process did not make id %x… or has used it already: rank 0 must run in the process that made the id, and each id serves one job", nonce[:4])
		}
		defer ln.Close()
		if err := c.accept(ln, nonce, deadline); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	if err := c.dial(addr, nonce, deadline); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Comm) accept(ln net.Listener, nonce [nonceSize]byte, deadline time.Time) error {
	c.conns = make([]net.Conn, c.size)
	tl, _ := ln.(*net.TCPListener)
	for missing := c.size - 1; missing > 0; {
		if tl != nil {
			tl.SetDeadline(deadline)
		}
		conn, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("rank 0: waited %v for %d of %d ranks to connect: %w", c.timeout, missing, c.size-1, timeoutErr(err))
		}
		conn.SetDeadline(deadline)
		var h [helloSize]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			conn.Close()
			continue // not one of ours, or gone: keep waiting for the ranks
		}
		var got [nonceSize]byte
		copy(got[:], h[8:])
		r, n := int(binary.LittleEndian.Uint32(h[8+nonceSize:])), int(binary.LittleEndian.Uint32(h[12+nonceSize:]))
		var refuse string
		switch {
		case !bytes.Equal(h[:8], magic[:]) || got != nonce:
			refuse = "this connection does not carry this job's id"
		case n != c.size:
			refuse = fmt.Sprintf("rank %d says the job has %d ranks, rank 0 says %d", r, n, c.size)
		case r < 1 || r >= c.size:
			refuse = fmt.Sprintf("rank %d is out of range for %d ranks", r, c.size)
		case c.conns[r] != nil:
			refuse = fmt.Sprintf("two processes connected as rank %d", r)
		}
		if refuse != "" {
			writeFrame(conn, frame{op: opHello, status: statusFail}, []byte(refuse))
			conn.Close()
			if got == nonce { // one of this job's ranks is misconfigured: fail the job
				return fmt.Errorf("rank 0: %s", refuse)
			}
			continue
		}
		c.conns[r] = conn
		missing--
	}
	for r := 1; r < c.size; r++ {
		if err := writeFrame(c.conns[r], frame{op: opHello}, nil); err != nil {
			return fmt.Errorf("rank 0: greet rank %d: %w", r, err)
		}
	}
	c.clearDeadlines()
	return nil
}

func (c *Comm) dial(addr string, nonce [nonceSize]byte, deadline time.Time) error {
	var conn net.Conn
	var err error
	for sleep := 10 * time.Millisecond; ; sleep = min(2*sleep, 500*time.Millisecond) {
		d := net.Dialer{Deadline: deadline}
		conn, err = d.Dial("tcp", addr)
		if err == nil {
			break
		}
		if time.Now().Add(sleep).After(deadline) {
			return fmt.Errorf("rank %d: connect to rank 0 at %s for %v: %w", c.rank, addr, c.timeout, timeoutErr(err))
		}
		time.Sleep(sleep)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c.conns = []net.Conn{conn}
	conn.SetDeadline(deadline)
	var h [helloSize]byte
	copy(h[:], magic[:])
	copy(h[8:], nonce[:])
	binary.LittleEndian.PutUint32(h[8+nonceSize:], uint32(c.rank))
	binary.LittleEndian.PutUint32(h[12+nonceSize:], uint32(c.size))
	if _, err := conn.Write(h[:]); err != nil {
		return fmt.Errorf("rank %d: greet rank 0 at %s: %w", c.rank, addr, err)
	}
	f, body, err := readFrame(conn)
	if err != nil {
		return fmt.Errorf("rank %d: wait for rank 0 at %s to see every rank: %w", c.rank, addr, timeoutErr(err))
	}
	if f.status != statusOK {
		return fmt.Errorf("rank %d: rank 0 refused this rank: %s", c.rank, body)
	}
	c.clearDeadlines()
	return nil
}

func (c *Comm) clearDeadlines() {
	for _, conn := range c.conns {
		if conn != nil {
			conn.SetDeadline(time.Time{})
		}
	}
}

func timeoutErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%v: %w", err, transport.ErrTimeout)
	}
	return err
}

// Rank implements transport.Comm.
func (c *Comm) Rank() int { return c.rank }

// Size implements transport.Comm.
func (c *Comm) Size() int { return c.size }

// Close closes the connections; later collectives return an error. Closing
// one rank makes the others' next collective fail at once.
func (c *Comm) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	for _, conn := range c.conns {
		if conn != nil {
			conn.Close()
		}
	}
	return nil
}

// Abort closes the connections, which fails every other rank's next or
// current collective at once, and exits this process with code (1 if 0).
func (c *Comm) Abort(code int) {
	if code == 0 {
		code = 1
	}
	c.Close()
	os.Exit(code)
}

// Wire format: a 16-byte header (op, status, seq, payload length), then the
// payload.
type frame struct {
	op     byte
	status byte
	seq    uint32
}

const (
	opHello byte = iota + 1
	opBarrier
	opBcast
	opAllGather
	opAllReduce
	opAlltoallv
)

var opNames = map[byte]string{opHello: "hello", opBarrier: "barrier", opBcast: "bcast",
	opAllGather: "allgather", opAllReduce: "allreduce", opAlltoallv: "alltoallv"}

const (
	statusOK   = 0
	statusFail = 1
	headerSize = 16
	// maxPayload bounds what a peer may make this process allocate.
	maxPayload = 1 << 36
)

func writeFrame(w io.Writer, f frame, body []byte) error {
	var h [headerSize]byte
	h[0], h[1] = f.op, f.status
	binary.LittleEndian.PutUint32(h[4:], f.seq)
	binary.LittleEndian.PutUint64(h[8:], uint64(len(body)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

func readFrame(r io.Reader) (frame, []byte, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return frame{}, nil, err
	}
	f := frame{op: h[0], status: h[1], seq: binary.LittleEndian.Uint32(h[4:])}
	n := binary.LittleEndian.Uint64(h[8:])
	if n > maxPayload {
		return f, nil, fmt.Errorf("frame of %d bytes is larger than %d", n, uint64(maxPayload))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return f, nil, err
	}
	return f, body, nil
}

// combine is rank 0's part of a collective: from every rank's contribution,
// each rank's answer, or an error that every rank returns.
type combine func(parts [][]byte) (answers [][]byte, err error)

// collective runs one collective: mine is this rank's contribution; the
// answer is this rank's.
func (c *Comm) collective(op byte, mine []byte, comb combine) ([]byte, error) {
	name := opNames[op]
	if c.closed {
		return nil, fmt.Errorf("rank %d: %s after Close", c.rank, name)
	}
	if c.broken != nil {
		return nil, fmt.Errorf("rank %d: %s not started: the communicator is unusable after an earlier failure: %w", c.rank, name, c.broken)
	}
	c.seq++
	deadline := time.Now().Add(c.timeout)
	for _, conn := range c.conns {
		if conn != nil {
			conn.SetDeadline(deadline)
		}
	}
	if c.size == 1 {
		ans, err := comb([][]byte{mine})
		if err != nil {
			return nil, fmt.Errorf("rank 0: %s: %w", name, err)
		}
		return ans[0], nil
	}
	if c.rank != 0 {
		if err := writeFrame(c.conns[0], frame{op: op, seq: c.seq}, mine); err != nil {
			return nil, c.fail(fmt.Errorf("rank %d: %s: send to rank 0: %w", c.rank, name, timeoutErr(err)))
		}
		f, body, err := readFrame(c.conns[0])
		if err != nil {
			return nil, c.fail(fmt.Errorf("rank %d: %s: wait for rank 0 (waited up to %v; a rank has died, is stuck, or called another collective): %w", c.rank, name, c.timeout, timeoutErr(err)))
		}
		if f.seq != c.seq {
			return nil, c.fail(fmt.Errorf("rank %d: %s #%d: rank 0 answered collective #%d", c.rank, name, c.seq, f.seq))
		}
		if f.status != statusOK {
			return nil, fmt.Errorf("rank %d: %s: %s", c.rank, name, body)
		}
		if f.op != op {
			return nil, c.fail(fmt.Errorf("rank %d: %s #%d: rank 0 answered %s", c.rank, name, c.seq, opNames[f.op]))
		}
		return body, nil
	}
	parts := make([][]byte, c.size)
	parts[0] = mine
	var mismatch error
	for r := 1; r < c.size; r++ {
		f, body, err := readFrame(c.conns[r])
		if err != nil {
			return nil, c.fail(fmt.Errorf("rank 0: %s: wait for rank %d (waited up to %v; it has died, is stuck, or called another collective): %w", name, r, c.timeout, timeoutErr(err)))
		}
		if (f.op != op || f.seq != c.seq) && mismatch == nil {
			mismatch = fmt.Errorf("rank %d called %s (collective #%d) while rank 0 called %s (#%d): every rank must call the same collectives in the same order", r, opNames[f.op], f.seq, name, c.seq)
		}
		parts[r] = body
	}
	var answers [][]byte
	err := mismatch
	if err == nil {
		answers, err = comb(parts)
	}
	for r := 1; r < c.size; r++ {
		var werr error
		if err != nil {
			werr = writeFrame(c.conns[r], frame{op: op, seq: c.seq, status: statusFail}, []byte(err.Error()))
		} else {
			werr = writeFrame(c.conns[r], frame{op: op, seq: c.seq}, answers[r])
		}
		if werr != nil {
			return nil, c.fail(fmt.Errorf("rank 0: %s: answer rank %d: %w", name, r, timeoutErr(werr)))
		}
	}
	if mismatch != nil {
		return nil, c.fail(fmt.Errorf("rank 0: %s: %w", name, mismatch))
	}
	if err != nil {
		return nil, fmt.Errorf("rank 0: %s: %w", name, err)
	}
	return answers[0], nil
}

// fail marks the communicator unusable and closes it, so that the other
// ranks fail at once instead of at their timeout.
func (c *Comm) fail(err error) error {
	c.broken = err
	for _, conn := range c.conns {
		if conn != nil {
			conn.Close()
		}
	}
	return err
}

func same(n int, b []byte) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

// Barrier implements transport.Comm.
func (c *Comm) Barrier() error {
	_, err := c.collective(opBarrier, nil, func(p [][]byte) ([][]byte, error) { return same(len(p), nil), nil })
	return err
}

// Bcast implements transport.Comm; a rank whose buffer length differs from
// the root's makes every rank return an error.
func (c *Comm) Bcast(root int, buf []byte) error {
	if root < 0 || root >= c.size {
		return fmt.Errorf("rank %d: bcast: root %d out of range [0, %d)", c.rank, root, c.size)
	}
	mine := binary.LittleEndian.AppendUint32(nil, uint32(root))
	mine = binary.LittleEndian.AppendUint64(mine, uint64(len(buf)))
	if c.rank == root {
		mine = append(mine, buf...)
	}
	ans, err := c.collective(opBcast, mine, func(p [][]byte) ([][]byte, error) {
		rt := int(binary.LittleEndian.Uint32(p[0]))
		for r, b := range p {
			if len(b) < 12 {
				return nil, fmt.Errorf("rank %d sent a short bcast header", r)
			}
			if got := int(binary.LittleEndian.Uint32(b)); got != rt {
				return nil, fmt.Errorf("rank %d names root %d, rank 0 names root %d", r, got, rt)
			}
		}
		want := binary.LittleEndian.Uint64(p[rt][4:])
		for r, b := range p {
			if n := binary.LittleEndian.Uint64(b[4:]); n != want {
				return nil, fmt.Errorf("rank %d has %d bytes, root %d has %d", r, n, rt, want)
			}
		}
		return same(len(p), p[rt][12:]), nil
	})
	if err != nil {
		return err
	}
	copy(buf, ans)
	return nil
}

func appendParts(dst []byte, parts [][]byte) []byte {
	for _, b := range parts {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(len(b)))
		dst = append(dst, b...)
	}
	return dst
}

func splitParts(b []byte, n int) ([][]byte, error) {
	out := make([][]byte, n)
	for i := range out {
		if len(b) < 8 {
			return nil, errors.New("truncated message")
		}
		l := binary.LittleEndian.Uint64(b)
		b = b[8:]
		if l > uint64(len(b)) {
			return nil, errors.New("truncated message")
		}
		out[i] = b[:l:l]
		b = b[l:]
	}
	if len(b) != 0 {
		return nil, errors.New("trailing bytes in message")
	}
	return out, nil
}

// AllGather implements transport.Comm.
func (c *Comm) AllGather(local []byte) ([][]byte, error) {
	ans, err := c.collective(opAllGather, local, func(p [][]byte) ([][]byte, error) {
		return same(len(p), appendParts(nil, p)), nil
	})
	if err != nil {
		return nil, err
	}
	out, err := splitParts(ans, c.size)
	if err != nil {
		return nil, c.fail(fmt.Errorf("rank %d: allgather: %w", c.rank, err))
	}
	return out, nil
}

// AllReduceF64 implements transport.Comm; values are reduced in rank order.
func (c *Comm) AllReduceF64(op transport.Op, vals []float64) error {
	if op != transport.Sum && op != transport.Max && op != transport.Min {
		return fmt.Errorf("rank %d: allreduce: unknown operation %d", c.rank, op)
	}
	mine := []byte{byte(op)}
	for _, v := range vals {
		mine = binary.LittleEndian.AppendUint64(mine, math.Float64bits(v))
	}
	ans, err := c.collective(opAllReduce, mine, func(p [][]byte) ([][]byte, error) {
		for r, b := range p {
			if b[0] != p[0][0] {
				return nil, fmt.Errorf("rank %d reduces with operation %d, rank 0 with %d", r, b[0], p[0][0])
			}
			if len(b) != len(p[0]) {
				return nil, fmt.Errorf("ranks give different numbers of values (rank %d %d, rank 0 %d)", r, (len(b)-1)/8, (len(p[0])-1)/8)
			}
		}
		out := append([]byte(nil), p[0][1:]...)
		for _, b := range p[1:] {
			for i := 0; i+8 <= len(out); i += 8 {
				a := math.Float64frombits(binary.LittleEndian.Uint64(out[i:]))
				v := math.Float64frombits(binary.LittleEndian.Uint64(b[1+i:]))
				switch transport.Op(p[0][0]) {
				case transport.Sum:
					a += v
				case transport.Max:
					a = math.Max(a, v)
				case transport.Min:
					a = math.Min(a, v)
				}
				binary.LittleEndian.PutUint64(out[i:], math.Float64bits(a))
			}
		}
		return same(len(p), out), nil
	})
	if err != nil {
		return err
	}
	for i := range vals {
		vals[i] = math.Float64frombits(binary.LittleEndian.Uint64(ans[8*i:]))
	}
	return nil
}

// Alltoallv implements transport.Comm.
func (c *Comm) Alltoallv(send [][]byte) ([][]byte, error) {
	if len(send) != c.size {
		return nil, fmt.Errorf("rank %d: alltoallv: %d send buffers for %d ranks", c.rank, len(send), c.size)
	}
	ans, err := c.collective(opAlltoallv, appendParts(nil, send), func(p [][]byte) ([][]byte, error) {
		mats := make([][][]byte, len(p))
		for s, b := range p {
			m, err := splitParts(b, len(p))
			if err != nil {
				return nil, fmt.Errorf("rank %d's message: %w", s, err)
			}
			mats[s] = m
		}
		out := make([][]byte, len(p))
		col := make([][]byte, len(p))
		for d := range out {
			for s := range col {
				col[s] = mats[s][d]
			}
			out[d] = appendParts(nil, col)
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	recv, err := splitParts(ans, c.size)
	if err != nil {
		return nil, c.fail(fmt.Errorf("rank %d: alltoallv: %w", c.rank, err))
	}
	return recv, nil
}

// String names the communicator in logs.
func (c *Comm) String() string {
	return "tcp rank " + strconv.Itoa(c.rank) + " of " + strconv.Itoa(c.size)
}
