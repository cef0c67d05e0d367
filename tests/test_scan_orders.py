import pytest
import torch

from mmlocalmamba.ops import scan_orders as so

SIZES = [(1, 1), (2, 3), (3, 2), (5, 7), (7, 7), (8, 12), (9, 13), (14, 14), (16, 24)]
DIRECTIONS = list(so.ALL_DIRECTIONS) + ['w3', 'w3_flip', 'w5', 'w1', 'w16_flip']


def window_reference(height, width, k):
    """seq index of token (h, w) straight from the documented formula."""
    hp, wp = -(-height // k) * k, -(-width // k) * k
    wg = wp // k
    seq = torch.full((hp * wp, ), height * width, dtype=torch.long)
    for h in range(height):
        for w in range(width):
            gh, ih, gw, iw = h // k, h % k, w // k, w % k
            seq[((gh * wg + gw) * k + ih) * k + iw] = h * width + w
    return seq


@pytest.mark.parametrize('hw', SIZES)
@pytest.mark.parametrize('direction', DIRECTIONS)
def test_scan_is_permutation_and_reverse_restores(hw, direction):
    height, width = hw
    x = torch.randn(2, 3, height, width)
    seq = so.scan(x, direction)
    assert seq.shape[-1] == so.scan_length(height, width, direction)
    gather = so.gather_index(height, width, direction)
    real = gather[gather < height * width]
    # every token appears exactly once, the rest are zero padding tokens
    assert torch.equal(real.sort().values, torch.arange(height * width))
    assert torch.all(seq[..., gather == height * width] == 0)
    back = so.reverse(seq, height, width, direction)
    assert torch.equal(back, x.flatten(-2))


@pytest.mark.parametrize('hw', SIZES)
def test_directions_match_documented_orders(hw):
    height, width = hw
    grid = torch.arange(height * width).view(height, width)
    assert torch.equal(so.gather_index(height, width, 'h'), grid.flatten())
    assert torch.equal(so.gather_index(height, width, 'h_flip'), grid.flatten().flip(0))
    assert torch.equal(so.gather_index(height, width, 'v'), grid.t().flatten())
    assert torch.equal(so.gather_index(height, width, 'v_flip'), grid.t().flatten().flip(0))
    for k in (2, 3, 7):
        ref = window_reference(height, width, k)
        assert torch.equal(so.gather_index(height, width, f'w{k}'), ref)
        assert torch.equal(so.gather_index(height, width, f'w{k}_flip'), ref.flip(0))


def test_window_flip_puts_padding_first():
    # 3x3 grid, windows of 2: padded to 4x4, the last window row is half padding.
    gather = so.gather_index(3, 3, 'w2_flip')
    assert gather.numel() == 16
    assert gather[0].item() == 9  # padding token comes first


def test_official_v_reverse_quirk():
    # README example: H=2, W=3, reverse(scan_v(x)) = x at [0, 4, 3, 2, 1, 5]
    x = torch.arange(6.).view(1, 2, 3)
    out = so.reverse(so.scan(x, 'v'), 2, 3, 'v', official_v_reverse=True)
    assert out.flatten().tolist() == [0, 4, 3, 2, 1, 5]
    assert so.reverse(so.scan(x, 'v'), 2, 3, 'v').flatten().tolist() == list(range(6))
    # v_flip: the official reverse flips, then applies the same wrong map
    out = so.reverse(so.scan(x, 'v_flip'), 2, 3, 'v_flip', official_v_reverse=True)
    assert out.flatten().tolist() == [0, 4, 3, 2, 1, 5]


@pytest.mark.parametrize('direction', ['v', 'v_flip'])
@pytest.mark.parametrize('size', [1, 4, 7])
def test_official_v_reverse_agrees_on_square(direction, size):
    x = torch.randn(2, size, size)
    seq = so.scan(x, direction)
    assert torch.equal(
        so.reverse(seq, size, size, direction, official_v_reverse=True),
        so.reverse(seq, size, size, direction))


def test_official_v_reverse_only_changes_v():
    for d in ('h', 'h_flip', 'w2', 'w7_flip'):
        assert torch.equal(so.inverse_index(5, 7, d, official_v_reverse=True),
                           so.inverse_index(5, 7, d))


@pytest.mark.parametrize('hw', [(5, 7), (8, 12), (7, 7)])
def test_multi_scan_pads_to_common_length_and_reverses(hw):
    height, width = hw
    dirs = ['h', 'v_flip', 'w2', 'w7_flip']
    x = torch.randn(2, 3, height, width)
    seqs = so.multi_scan(x, dirs)
    length = max(so.scan_length(height, width, d) for d in dirs)
    assert seqs.shape == (2, 4, 3, length)
    for k, d in enumerate(dirs):
        own = so.scan(x, d)
        assert torch.equal(seqs[:, k, :, :own.shape[-1]], own)
        assert torch.all(seqs[:, k, :, own.shape[-1]:] == 0)  # end padding
    back = so.multi_reverse(seqs, height, width, dirs)
    assert torch.equal(back, x.flatten(2).unsqueeze(1).expand(-1, 4, -1, -1))


def test_multi_scan_gradients_flow_back():
    x = torch.randn(1, 2, 5, 7, requires_grad=True)
    seqs = so.multi_scan(x, ['w2', 'w2_flip'])
    seqs.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.))


@pytest.mark.parametrize('bad', ['x', 'w0', 'w', 'h_flip_flip', 'W2', 'w2flip', '', None, 7])
def test_unknown_direction_lists_valid_forms(bad):
    with pytest.raises(ValueError, match="valid forms are 'h', 'h_flip', 'v', 'v_flip', 'wK'"):
        so.parse_direction(bad)


def test_direction_lists_validation():
    assert so.direction_lists([['h', 'w3']], 1) == [('h', 'w3')]
    with pytest.raises(ValueError, match='expected 3 lists, got 2'):
        so.direction_lists([['h'], ['v']], 3)
    with pytest.raises(ValueError, match='non-empty list'):
        so.direction_lists([[]], 1)
    with pytest.raises(ValueError, match='Unknown scan direction'):
        so.direction_lists([['h', 'diag']], 1)


def test_tables_are_cached():
    assert so.gather_index(9, 13, 'w7') is so.gather_index(9, 13, 'w7')
    assert so.stacked_gather_index(9, 13, ['h', 'w7']) is so.stacked_gather_index(
        9, 13, ('h', 'w7'))
