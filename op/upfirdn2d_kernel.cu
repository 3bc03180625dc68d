// upfirdn2d CUDA kernel: one thread per output element (grid-stride loop).
//
// Output (oy, ox) of plane p is the sum over kernel taps (ty, tx) of
//   u[oy * down_y + ty - pad_y0, ox * down_x + tx - pad_x0] * k[kh - 1 - ty, kw - 1 - tx]
// where u is the zero-inserted input: u[iy * up_y, ix * up_x] = x[iy, ix], zero elsewhere
// (and zero outside the input). Taps that land on inserted zeros are skipped.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <algorithm>

namespace {

struct UpFirDnParams {
  int64_t total;  // number of output elements
  int in_h, in_w, out_h, out_w, kh, kw;
  int up_x, up_y, down_x, down_y, pad_x0, pad_y0;
};

template <typename scalar_t>
__global__ void upfirdn2d_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ in,
                                 const scalar_t* __restrict__ kernel, const UpFirDnParams p) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < p.total;
       idx += stride) {
    const int ox = static_cast<int>(idx % p.out_w);
    const int oy = static_cast<int>((idx / p.out_w) % p.out_h);
    const int64_t plane = idx / (static_cast<int64_t>(p.out_w) * p.out_h);
    const scalar_t* src = in + plane * p.in_h * p.in_w;

    // Position, in the zero-inserted signal, of tap 0.
    const int base_y = oy * p.down_y - p.pad_y0;
    const int base_x = ox * p.down_x - p.pad_x0;
    acc_t acc = 0;
    for (int ty = 0; ty < p.kh; ++ty) {
      const int uy = base_y + ty;
      if (uy < 0 || uy % p.up_y != 0) continue;
      const int iy = uy / p.up_y;
      if (iy >= p.in_h) break;
      const scalar_t* krow = kernel + (p.kh - 1 - ty) * p.kw;
      for (int tx = 0; tx < p.kw; ++tx) {
        const int ux = base_x + tx;
        if (ux < 0 || ux % p.up_x != 0) continue;
        const int ix = ux / p.up_x;
        if (ix >= p.in_w) break;
        acc += static_cast<acc_t>(src[iy * p.in_w + ix]) * static_cast<acc_t>(krow[p.kw - 1 - tx]);
      }
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

}  // namespace

at::Tensor upfirdn2d_cuda(const at::Tensor& input, const at::Tensor& kernel,
                             int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y,
                             int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t n = input.size(0), c = input.size(1), in_h = input.size(2), in_w = input.size(3);
  const int64_t kh = kernel.size(0), kw = kernel.size(1);
  const int64_t out_h = (in_h * up_y + pad_y0 + pad_y1 - kh + down_y) / down_y;
  const int64_t out_w = (in_w * up_x + pad_x0 + pad_x1 - kw + down_x) / down_x;
  TORCH_CHECK(out_h > 0 && out_w > 0, "upfirdn2d: empty output");

  auto out = at::empty({n, c, out_h, out_w}, input.options());
  UpFirDnParams p;
  p.total = out.numel();
  p.in_h = in_h; p.in_w = in_w; p.out_h = out_h; p.out_w = out_w; p.kh = kh; p.kw = kw;
  p.up_x = up_x; p.up_y = up_y; p.down_x = down_x; p.down_y = down_y;
  p.pad_x0 = pad_x0; p.pad_y0 = pad_y0;
  if (p.total == 0) return out;

  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((p.total + threads - 1) / threads, 65535LL * 8);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(),
                                  "upfirdn2d_cuda", [&] {
    upfirdn2d_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        out.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
