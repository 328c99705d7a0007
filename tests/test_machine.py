"""What machine this is: the CPU class beside every published time."""

from cings.machine import cpu_class, cpu_flags, cpu_name


def test_the_cpu_class_names_what_decides_the_speed():
    assert cpu_class({"avx2", "avx512f", "avx512_bf16"}, "AVX512") == "AVX-512 BF16"
    assert cpu_class({"avx2", "avx512f", "avx512_bf16"}, "AVX2") == "AVX-512 BF16, torch kernels at AVX2"
    assert cpu_class({"avx2", "avx512f"}, "AVX512") == "AVX-512"
    assert cpu_class({"avx2", "fma"}, "AVX2") == "AVX2"
    assert cpu_class({"sse4_2"}, "DEFAULT") == "no AVX2"


def test_this_machine_is_described():
    assert cpu_name() and isinstance(cpu_flags(), set) and cpu_class()
