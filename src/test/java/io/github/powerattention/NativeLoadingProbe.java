package io.github.powerattention;

/**
 * Run in a child JVM by {@link NativeLoadingTest} (and {@code CudaLoadingTest}): loads the natives the way a user's
 * first call does, then prints what LibTorch sees. Args: {@code power-first} (our natives, then LibTorch's CUDA
 * question) or {@code torch-first} (LibTorch's question before anything of ours is loaded).
 */
public final class NativeLoadingProbe {
    private NativeLoadingProbe() {}

    public static void main(String[] args) {
        boolean torchFirst = args.length > 0 && args[0].equals("torch-first");
        if (torchFirst) {
            System.out.println("cuda_is_available before power-attention=" + org.bytedeco.pytorch.global.torch.cuda_is_available());
        }
        PowerAttention.loadNatives();
        System.out.println("stateDim(64, 2)=" + PowerAttention.stateDim(64, 2));
        System.out.println("cuda_is_available=" + org.bytedeco.pytorch.global.torch.cuda_is_available());
    }
}
