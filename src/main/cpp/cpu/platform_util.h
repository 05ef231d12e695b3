// platform_util.h: the few operating-system calls of the native core, one implementation per OS (Linux, macOS,
// Windows) in platform_util.cpp, so the rest stays plain C++ against LibTorch.
#pragma once

#include <vector>

namespace power_attention {
namespace platform {

/// The machine's physical memory in bytes, or 0 where the OS does not say.
double physical_memory_bytes();

/// The address of `symbol` in the already loaded shared library whose file name is `library`, or nullptr when no
/// such library is loaded or it lacks the symbol. Never loads a library.
void* loaded_symbol(const char* library, const char* symbol);

/// The file names under which OpenBLAS from Bytedeco's JARs can be loaded on this OS (JavaCPP's renamed copy
/// first), for loaded_symbol.
const std::vector<const char*>& openblas_library_names();

}  // namespace platform
}  // namespace power_attention
