//go:build mpi

package main

// buildTags are this test run's: the library is built with MPI.
var buildTags = []string{"-tags", "mpi"}
