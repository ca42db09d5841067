module github.com/moerun/moerun

go 1.26

require (
	github.com/NVIDIA/go-nvml v0.13.4-1
	github.com/emer/empi v1.0.22
	github.com/mattn/go-isatty v0.0.20
	github.com/rs/zerolog v1.35.1
)

require (
	github.com/mattn/go-colorable v0.1.14 // indirect
	golang.org/x/sys v0.29.0 // indirect
)
