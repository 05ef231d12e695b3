/**
 * Internal, exported to JavaCPP only: the JavaCPP presets of the native library (platforms, headers, link lists,
 * for the build and for JavaCPP's loader) and the quiet OpenBLAS version check that runs before the natives load.
 */
package io.github.powerattention.internal.presets;
