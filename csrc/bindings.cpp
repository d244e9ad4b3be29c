// The Python module shiftnas._C. Importing it loads this library, whose static initializers
// register the shiftnas::ext_* operators with the PyTorch dispatcher (ops.cpp, and cuda/*.cu in a
// CUDA build); Python calls them as torch.ops.shiftnas.ext_* (shiftnas/ops/*_ext.py). The module
// itself only says whether the CUDA kernels were compiled in.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() =
      "shiftnas compiled ops: loading this module registers torch.ops.shiftnas.ext_layer_norm, "
      "ext_layer_norm_backward, ext_dwconv, ext_dwconv_backward and ext_mask_dot (load it "
      "through shiftnas._ext, not directly).";
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
