/**
 * Internal, not exported by the module: the raw JavaCPP binding of the C++ API ({@code power_attention.h}), its
 * error translation and the loading of LibTorch's natives and ours. Its signatures follow the native side and may
 * change in any release; call {@link io.github.powerattention.PowerAttention} instead.
 */
package io.github.powerattention.internal;
