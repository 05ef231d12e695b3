package io.github.powerattention;

import static org.bytedeco.pytorch.global.torch.cuda_is_available;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.bytedeco.pytorch.Device;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** {@link SecondDerivativeTest} on CUDA tensors (fp64): create_graph gives exact second derivatives there too. */
@Tag("gpu")
class CudaSecondDerivativeTest {

    @BeforeAll
    static void needsCuda() {
        PowerAttention.loadNatives();
        assertTrue(cuda_is_available(), "no CUDA device is visible to LibTorch: the gpu suite needs one");
    }

    @ParameterizedTest(name = "chunk{0}-stateful{1}-p{2}")
    @CsvSource({"0,false,2", "5,false,2", "0,true,2", "4,true,2", "5,false,3"})
    void matchesFiniteDifferences(long chunk, boolean stateful, int p) {
        SecondDerivativeTest.check(chunk, stateful, p, new Device("cuda:0"));
    }
}
