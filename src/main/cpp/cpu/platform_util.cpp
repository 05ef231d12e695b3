// platform_util.cpp: see platform_util.h.
#include "cpu/platform_util.h"

#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
#else
#include <dlfcn.h>
#include <unistd.h>
#if defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>
#include <cstdint>
#endif
#endif

namespace power_attention {
namespace platform {

double physical_memory_bytes() {
#if defined(_WIN32)
  MEMORYSTATUSEX status{};
  status.dwLength = sizeof(status);
  if (GlobalMemoryStatusEx(&status)) return static_cast<double>(status.ullTotalPhys);
  return 0;
#elif defined(__APPLE__)
  int64_t bytes = 0;
  size_t size = sizeof(bytes);
  if (sysctlbyname("hw.memsize", &bytes, &size, nullptr, 0) == 0 && bytes > 0) return static_cast<double>(bytes);
  return 0;
#else
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) return static_cast<double>(pages) * static_cast<double>(page);
  return 0;
#endif
}

void* loaded_symbol(const char* library, const char* symbol) {
#if defined(_WIN32)
  HMODULE module = GetModuleHandleA(library);
  if (module == nullptr) return nullptr;
  return reinterpret_cast<void*>(GetProcAddress(module, symbol));
#else
  void* handle = dlopen(library, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return nullptr;
  void* address = dlsym(handle, symbol);
  dlclose(handle);  // RTLD_NOLOAD took a reference of its own; the library stays loaded
  return address;
#endif
}

const std::vector<const char*>& openblas_library_names() {
#if defined(_WIN32)
  static const std::vector<const char*> names = {"libopenblas_nolapack.dll", "libopenblas.dll"};
#elif defined(__APPLE__)
  static const std::vector<const char*> names = {"libopenblas_nolapack.0.dylib", "libopenblas.0.dylib"};
#else
  static const std::vector<const char*> names = {"libopenblas_nolapack.so.0", "libopenblas.so.0"};
#endif
  return names;
}

}  // namespace platform
}  // namespace power_attention
