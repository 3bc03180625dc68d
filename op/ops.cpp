// Python bindings and argument checks for the StyleGAN2 CUDA ops.
// The kernels themselves live in upfirdn2d_kernel.cu and fused_bias_act_kernel.cu.
#include <torch/extension.h>

torch::Tensor upfirdn2d_cuda(const torch::Tensor& input, const torch::Tensor& kernel,
                             int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y,
                             int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1);
torch::Tensor fused_bias_act_cuda(const torch::Tensor& input, const torch::Tensor& bias,
                                  double negative_slope, double scale);
torch::Tensor bias_act_grad_cuda(const torch::Tensor& grad, const torch::Tensor& ref,
                                 double negative_slope, double scale);

#define CHECK_CUDA_CONTIG(x)                                              \
  TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor");                \
  TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")

static torch::Tensor upfirdn2d(const torch::Tensor& input, const torch::Tensor& kernel,
                               int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y,
                               int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
  CHECK_CUDA_CONTIG(input);
  CHECK_CUDA_CONTIG(kernel);
  TORCH_CHECK(input.dim() == 4, "input must be [N, C, H, W]");
  TORCH_CHECK(kernel.dim() == 2, "kernel must be 2-D");
  TORCH_CHECK(kernel.scalar_type() == input.scalar_type(), "kernel and input dtypes differ");
  TORCH_CHECK(kernel.device() == input.device(), "kernel and input devices differ");
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "up/down must be >= 1");
  return upfirdn2d_cuda(input, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1);
}

static torch::Tensor fused_bias_act(const torch::Tensor& input, const torch::Tensor& bias,
                                    double negative_slope, double scale) {
  CHECK_CUDA_CONTIG(input);
  TORCH_CHECK(input.dim() >= 2, "input must be [N, C, ...]");
  if (bias.numel() > 0) {
    CHECK_CUDA_CONTIG(bias);
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == input.size(1), "bias must be [C]");
    TORCH_CHECK(bias.scalar_type() == input.scalar_type(), "bias and input dtypes differ");
    TORCH_CHECK(bias.device() == input.device(), "bias and input devices differ");
  }
  return fused_bias_act_cuda(input, bias, negative_slope, scale);
}

static torch::Tensor bias_act_grad(const torch::Tensor& grad, const torch::Tensor& ref,
                                   double negative_slope, double scale) {
  CHECK_CUDA_CONTIG(grad);
  CHECK_CUDA_CONTIG(ref);
  TORCH_CHECK(grad.sizes() == ref.sizes(), "grad and ref shapes differ");
  TORCH_CHECK(grad.scalar_type() == ref.scalar_type(), "grad and ref dtypes differ");
  return bias_act_grad_cuda(grad, ref, negative_slope, scale);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d, "upsample, pad, FIR filter, downsample (CUDA)");
  m.def("fused_bias_act", &fused_bias_act, "leaky_relu(input + bias) * scale (CUDA)");
  m.def("bias_act_grad", &bias_act_grad, "grad * (ref > 0 ? scale : negative_slope * scale) (CUDA)");
}
