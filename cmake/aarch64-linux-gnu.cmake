# Cross build for 64-bit Arm Linux with Debian's g++-aarch64-linux-gnu.
# Libraries come from Debian's multiarch arm64 packages (libhwy-dev:arm64,
# libpcre2-dev:arm64, libgtest-dev:arm64 under /usr/lib/aarch64-linux-gnu);
# header-only packages (nlohmann-json, CLI11) are architecture-independent.
# Test binaries run under qemu-user: see scripts/test-aarch64.sh.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(ENGRAM_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${ENGRAM_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${ENGRAM_CROSS_TRIPLE}-g++)
# Makes find_package/find_library look in /usr/lib/aarch64-linux-gnu and never
# in the host's /usr/lib/x86_64-linux-gnu.
set(CMAKE_LIBRARY_ARCHITECTURE ${ENGRAM_CROSS_TRIPLE})

# pkg-config must see only the arm64 .pc files (plus arch-independent ones).
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/${ENGRAM_CROSS_TRIPLE}/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

# Programs built for the target (GoogleTest discovery, ctest) run under qemu.
# No -L /usr/aarch64-linux-gnu: the arm64 loader and libc come from the
# multiarch libc6:arm64 (/lib/ld-linux-aarch64.so.1), the same ones libhwy1
# and libpcre2 are found beside. Mixing the cross sysroot's ld.so with the
# multiarch libc.so (different Debian revisions) hangs in pthread_create.
find_program(ENGRAM_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(ENGRAM_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${ENGRAM_QEMU_AARCH64})
endif()
