"""The few-row Linear product is F.linear's arithmetic, and it is undone after the block."""
import torch

from harness.eval.decode_linear import MAX_ROWS, few_row_linears


def test_few_row_product_equals_linear_and_is_removed_afterwards():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 8, bias=False))
    for shape in [(1, 1, 24), (3, 2, 24), (MAX_ROWS, 24), (2, MAX_ROWS, 24)]:
        x = torch.randn(*shape)
        want = model(x)
        with few_row_linears(model):
            assert "forward" in model[0].__dict__
            got = model(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert got.shape == want.shape
    assert "forward" not in model[0].__dict__ and "forward" not in model[1].__dict__


def test_other_modules_and_dtypes_are_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8).to(torch.bfloat16), torch.nn.Conv1d(2, 2, 1))
    with few_row_linears(model):
        assert "forward" not in model[0].__dict__ and "forward" not in model[1].__dict__
