// Package bootstrap starts one moerun rank: it initialises MPI, finds the
// rank's place in the job (world and node-local rank), binds it to a GPU, and
// agrees with the other ranks on what they run before any GPU memory is
// touched.
//
// # Builds
//
// MPI support needs the build tag mpi (go build -tags mpi, what 'make' does),
// cgo and Open MPI's development files (pkg-config ompi). MPI comes through
// github.com/emer/empi/mpi for initialisation queries and finalisation, and
// through a small cgo shim of our own for what empi lacks: MPI_Abort with a
// non-zero exit code, and collectives whose waits are bounded (non-blocking
// MPI-3 calls polled with MPI_Test until they finish or a deadline passes, so
// that a lost peer becomes an error wrapping transport.ErrTimeout, never a
// hang).
//
// A binary built without the tag runs as a single rank over an in-process
// transport.Local; started as one of several ranks (by mpirun or srun) it
// refuses to run rather than let every process believe it is rank 0.
//
// # Threads
//
// MPI is initialised with MPI_THREAD_FUNNELED: every MPI call, which means
// every method of World and of World.Comm, must come from the goroutine that
// called Init. Init locks that goroutine to its OS thread
// (runtime.LockOSThread), and the moerun command also locks its main goroutine
// in main's init(). Collectives check this (MPI_Is_thread_main) and return an
// error instead of calling MPI from another thread.
//
// # Timeouts
//
// MPI's start-up (MPI_Init_thread, which waits for every rank) is bounded by
// Options.Timeout too: it cannot be abandoned, so past the bound Init writes
// why to stderr and ends the process with exit code 1 (under mpirun, the
// job) rather than leave it waiting for a rank that died while starting.
//
// Every collective waits at most Options.Timeout. After a timeout the
// communicator is unusable (the timed-out operation is still pending inside
// MPI, and the next collective would pair with it on the other ranks): later
// collectives return an error at once, and the caller should end the job
// with World.Abort.
package bootstrap
