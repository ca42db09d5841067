package rank

import (
	"fmt"

	"github.com/moerun/moerun/rank/internal/tcpcomm"
)

// UniqueIDSize is the size of a UniqueID, that of an NCCL or NVSHMEM unique id.
const UniqueIDSize = tcpcomm.IDSize

// UniqueID names one job started without MPI: it holds rank 0's address and
// a random nonce. Rank 0 makes it and the driver hands the same bytes to
// every rank.
type UniqueID [UniqueIDSize]byte

// NewUniqueID makes the id of a new job. Call it in the process that will be
// rank 0, which starts listening for the other ranks (on every interface;
// it advertises its first non-loopback IPv4 address, or 127.0.0.1; set
// MOERUN_BOOTSTRAP_ADDR=host[:port] to choose). The driver then sends the
// id to every rank, for example with torch.distributed.broadcast_object_list.
func NewUniqueID() (UniqueID, error) {
	id, err := tcpcomm.NewID()
	if err != nil {
		return UniqueID{}, fmt.Errorf("rank: new unique id: %w", err)
	}
	return UniqueID(id), nil
}

// OpenWithID joins the job of id as rank of size ranks and opens a runtime
// over it, as Open does; rank 0 must call it in the process that made id.
// The ranks talk over TCP through rank 0 (every wait bounded by
// opts.Timeout); Close closes the connections. Both backends run over it:
// the CPU backend's rows travel over TCP (no bandwidth to speak of: meant
// for tests and drivers' CPU runs), and the GPU backend uses it only to start
// NVSHMEM and to agree on setup.
func OpenWithID(id UniqueID, rank, size int, shape Config, opts Options) (*Runtime, error) {
	c, err := tcpcomm.Connect(tcpcomm.ID(id), rank, size, opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("rank: join the job: %w", err)
	}
	rt, err := Open(c, shape, opts)
	if err != nil {
		c.Close()
		return nil, err
	}
	rt.ownComm = c
	return rt, nil
}
