#!/bin/sh
# gen-pc.sh TOP LIBDIR VERSION [installed]: prints tracecmd-rs.pc.
# Uninstalled (default): headers from TOP/include. Installed: PREFIX/include/tracecmd-rs.
top=$1 libdir=$2 version=$3
if [ "${4:-}" = installed ]; then inc="$top/include/tracecmd-rs"; else inc="$top/include"; fi
cat <<PC
libdir=$libdir
includedir=$inc

Name: tracecmd-rs
Description: trace-cmd message protocol, socket helper and per-CPU recorder (virt-server C ABI)
Version: $version
Libs: -L\${libdir} -ltracecmd_rs
Libs.private: -lpthread -ldl -lm -lrt -lgcc_s -lutil
Cflags: -I\${includedir}
PC
