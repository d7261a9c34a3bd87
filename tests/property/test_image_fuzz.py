"""Truncated and mutated kernel images give a parsed image or pvhboot's own error, nothing else.

Inputs: small synthetic ELFs and bzImages (every codec), and the real Debian bzImage's setup area
(its real header and setup code) grafted onto a small payload so that each example stays cheap.
"""
import functools

import imagekit
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvhboot.errors import PvhbootError
from pvhboot.image import describe_kernel
from pvhboot.image.symbols import SymbolTable

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ELF64 = imagekit.build_elf(symbols=[("startup_64", 0xFFFFFFFF81000000, 0x40, imagekit.STT_FUNC)])
ELF32 = imagekit.build_elf(elf_class=32, vaddr=0xC1000000)
BZIMAGES = {codec: imagekit.build_bzimage(imagekit.build_elf(), codec=codec) for codec in imagekit.CODECS}


@functools.cache
def _debian_hybrid(path) -> bytes:
    """The Debian bzImage's real setup area + a small lz4 legacy payload in place of its own."""
    return imagekit.graft_setup(path.read_bytes())


def _mutate(data: bytes, draw) -> bytes:
    """Up to 8 byte changes, half of them in the first 0x300 bytes (ELF/setup headers), then maybe a cut."""
    out = bytearray(data)
    n = len(out)
    edits = draw(st.lists(st.tuples(st.one_of(st.integers(0, min(n, 0x300) - 1), st.integers(0, n - 1)),
                                    st.integers(0, 255)), max_size=8))
    for pos, val in edits:
        out[pos] = val
    if draw(st.booleans()):
        out = out[:draw(st.integers(0, n))]
    return bytes(out)


def _check(data: bytes) -> None:
    try:
        k = describe_kernel(data, "fuzzed")
    except PvhbootError:
        return
    # A parsed image must be self-consistent enough for the boot layer.
    assert k.format in ("elf", "bzimage")
    for seg in k.segments:
        assert seg.filesz <= seg.memsz
    if k.format == "elf":
        assert all(seg.offset + seg.filesz <= len(data) for seg in k.segments)


@FUZZ
@given(st.data(), st.sampled_from(["elf64", "elf32"]))
def test_mutated_elf(data, which):
    _check(_mutate(ELF64 if which == "elf64" else ELF32, data.draw))


@FUZZ
@given(st.data(), st.sampled_from(imagekit.CODECS))
def test_mutated_synthetic_bzimage(data, codec):
    _check(_mutate(BZIMAGES[codec], data.draw))


@FUZZ
@given(st.data())
def test_mutated_payload_bytes(data):
    """Mutations inside the compressed payload itself (where the codecs' own errors come from)."""
    codec = data.draw(st.sampled_from(imagekit.CODECS))
    img = bytearray(BZIMAGES[codec])
    start = 5 * 512 + 0x100
    for _ in range(data.draw(st.integers(1, 6))):
        img[data.draw(st.integers(start, len(img) - 1))] = data.draw(st.integers(0, 255))
    _check(bytes(img))


@FUZZ
@given(st.data())
def test_mutated_debian_setup_area(debian_bzimage, data):
    _check(_mutate(_debian_hybrid(debian_bzimage), data.draw))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_symtab(data):
    blob = _mutate(ELF64, data.draw)
    try:
        SymbolTable.from_elf(blob)
    except PvhbootError:
        pass


def test_hybrid_is_parseable(debian_bzimage):
    """The unmutated hybrid parses, so the mutations above start from a valid image."""
    k = describe_kernel(_debian_hybrid(debian_bzimage), "hybrid")
    assert k.format == "bzimage" and k.bzimage.compression == "lz4" and k.bzimage.boot_protocol == (2, 15)


@pytest.mark.parametrize("codec", imagekit.CODECS)
def test_every_truncation_of_a_small_bzimage(codec):
    img = BZIMAGES[codec]
    for cut in range(0, len(img), max(1, len(img) // 150)):
        _check(img[:cut])


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(imagekit.CODECS), st.binary(max_size=4096), st.integers(0, 1 << 16),
       st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4))
def test_decompress_gives_exactly_the_claim_or_pvhboot_error(codec, raw, claim, edits):
    """Whatever the stream and its trailer's claim: the exact data when the claim is its length,
    else ImageError; never more output than the claim, never another exception."""
    from pvhboot.image.decompress import decompress_payload

    stream = bytearray(imagekit.compress(codec, raw))
    for pos, val in edits:
        stream[pos % len(stream)] = val
    try:
        out = decompress_payload(imagekit.with_size(bytes(stream), claim))
    except PvhbootError:
        return
    assert len(out) == claim
    if not edits:
        assert bytes(out) == raw
