# Sourced by scripts/build_cuda.sh and scripts/gpu_check.sh: the CMake
# arguments that let find_package(Torch) succeed for a CUDA torch wheel.
#
#   cuda_cmake_args PYTHON BUILD_DIR    fills the array CUDA_CMAKE_ARGS
#
# A CUDA wheel's TorchConfig runs Caffe2's cuda.cmake, which needs nvcc
# (CUDA_HOME, default /usr/local/cuda; its version must equal the toolkit's)
# and finds cublas, nvrtc, the driver and friends with find_library. Wheels
# carry those libraries under site-packages/nvidia/*/lib with versioned names
# only (libcublas.so.13), so a folder BUILD_DIR/cuda-link gets unversioned
# links to them; when no driver library is installed (a machine without a
# GPU) it also gets an empty libcuda.so stub, enough to link (nothing here
# calls the driver directly). TORCH_CUDA_ARCH_LIST defaults to 9.0 (Hopper).

cuda_cmake_args() {
  local python=$1 build_dir=$2
  local cuda_home=${CUDA_HOME:-/usr/local/cuda}
  if [[ ! -x $cuda_home/bin/nvcc ]]; then
    echo "no nvcc at $cuda_home/bin/nvcc (set CUDA_HOME)" >&2
    return 2
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  local link_dir=$build_dir/cuda-link
  mkdir -p "$link_dir"
  link_dir=$(cd "$link_dir" && pwd)
  local site
  site=$("$python" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
  local lib base
  for lib in "$site"/nvidia/*/lib/lib*.so.* "$cuda_home"/lib64/lib*.so.*; do
    [[ -e $lib ]] || continue
    base=$(basename "$lib")
    base=${base%%.so.*}.so
    [[ -e $link_dir/$base ]] || ln -sf "$lib" "$link_dir/$base"
  done
  if [[ ! -e $link_dir/libcuda.so ]]; then
    local driver
    driver=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
    for lib in /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1 \
               /usr/lib64/libcuda.so.1; do
      [[ -z $driver && -e $lib ]] && driver=$lib
    done
    if [[ -n $driver ]]; then
      ln -sf "$driver" "$link_dir/libcuda.so"
    else
      echo 'void loratune_cuda_stub(void) {}' > "$link_dir/cuda_stub.c"
      cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link_dir/libcuda.so" "$link_dir/cuda_stub.c"
    fi
  fi
  local torch_prefix
  torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  CUDA_CMAKE_ARGS=(
    "-DLORATUNE_TORCH_DIR=$torch_prefix"
    "-DCMAKE_CUDA_COMPILER=$cuda_home/bin/nvcc"
    "-DCUDAToolkit_ROOT=$cuda_home"
    "-DCUDA_TOOLKIT_ROOT_DIR=$cuda_home"
    "-DCMAKE_LIBRARY_PATH=$link_dir"
    "-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$link_dir -L$link_dir"
  )
}
