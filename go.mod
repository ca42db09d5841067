module github.com/moerun/moerun

go 1.26
