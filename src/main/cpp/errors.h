// errors.h: the two kinds of failure of power_full, told apart by type from the check that raises them to the
// Java exception the user sees.
//
//   bad argument   ArgumentError (a c10::ValueError), message "power_full: <argument> ...: expected ..., got ...";
//                  the Java facade and the raw binding throw IllegalArgumentException.
//   anything else  an internal failure (an invariant check, LibTorch, the allocator): the bindings' boundary
//                  (at_binding_boundary) gives its message the prefix kInternalErrorPrefix; Java throws
//                  PowerAttentionException.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <exception>
#include <stdexcept>
#include <string>
#include <utility>

namespace power_attention {

/// A bad argument to the op. The message starts with "power_full: ", names the argument, the expected and the
/// actual value.
class ArgumentError : public c10::ValueError {
 public:
  ArgumentError(c10::SourceLocation where, std::string message) : c10::ValueError(where, std::move(message)) {}
};

/// The start of every other failure's message once it has crossed a binding.
inline constexpr const char* kInternalErrorPrefix = "power_full internal error: ";

/// Runs f for a binding (the flat functions JavaCPP calls): argument errors pass unchanged, every other failure is
/// rethrown with kInternalErrorPrefix, so that no internal message can pass for a user's bad argument.
template <typename F>
auto at_binding_boundary(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const ArgumentError&) {
    throw;
  } catch (const c10::Error& e) {
    throw std::runtime_error(std::string(kInternalErrorPrefix) + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(kInternalErrorPrefix) + e.what());
  }
}

}  // namespace power_attention

/// Throws ArgumentError(message) unless cond; the message is c10::str of the arguments.
#define POWER_ATTENTION_CHECK_ARG(cond, ...)                                                                  \
  do {                                                                                                        \
    if (C10_UNLIKELY(!(cond))) {                                                                              \
      throw ::power_attention::ArgumentError({__func__, __FILE__, static_cast<uint32_t>(__LINE__)},           \
                                             ::c10::str(__VA_ARGS__));                                        \
    }                                                                                                         \
  } while (false)
