//go:build !mpi

package main

// buildTags are this test run's: the library is built without MPI (one rank
// unless started with a unique id).
var buildTags []string
