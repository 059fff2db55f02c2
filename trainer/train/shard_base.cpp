// Frozen base weights sharded over the ranks of a data-parallel run
// (train.shard_base).
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/nn/modules/container/modulelist.h>

#include "trainer/dist/dist.h"
#include "trainer/io/error.h"
#include "trainer/io/mmap.h"
#include "trainer/train/train.h"

namespace loratune::train {

struct ShardedBase::Piece {
  std::shared_ptr<model::LinearImpl> linear;
  at::Tensor registered;  // the module's own (emptied) weight, put back after each use
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;  // in the layer's weights laid end to end
};

struct ShardedBase::Layer {
  std::vector<Piece> pieces;
  int64_t total = 0;  // elements of all pieces
  int64_t chunk = 0;  // ceil(total / world): each rank's share
  at::Tensor shard;   // [chunk] this rank's share (the tail of the last one zero)
};

ShardedBase::ShardedBase(model::CausalLMImpl& model, dist::Group& group) : group_(group) {
  torch::NoGradGuard no_grad;
  const int64_t world = group.world_size(), rank = group.rank();
  const c10::Device device = model.device();  // the embeddings': never left on the host
  const auto& layers = model.model->layers;
  for (size_t l = 0; l < layers->size(); ++l) {
    auto decoder = layers->ptr<model::DecoderLayerImpl>(l);
    Layer s;
    for (auto& [path, linear] : model::linear_modules(*decoder)) {
      if (linear->nf4() != nullptr) {
        throw Error("train.shard_base: " + path + " holds an NF4 weight, which is not sharded",
                    ErrorKind::kUnsupported);
      }
      Piece p;
      p.linear = linear;
      p.shape = linear->weight.sizes().vec();
      p.numel = linear->weight.numel();
      p.offset = s.total;
      s.total += p.numel;
      s.pieces.push_back(std::move(p));
    }
    if (s.pieces.empty()) continue;
    s.chunk = (s.total + world - 1) / world;
    // The weights may still be on the host (LoadOptions::
    // layer_projections_on_host): the shard goes where the model runs.
    const at::TensorOptions opts = s.pieces[0].linear->weight.options().device(device);
    s.shard = at::zeros({s.chunk}, opts);
    // Copy this rank's range out of each weight it overlaps: a weight loaded
    // as a view of the mapped file is read only there.
    const int64_t lo = rank * s.chunk, hi = std::min(lo + s.chunk, s.total);
    for (Piece& p : s.pieces) {
      const int64_t a = std::max(lo, p.offset), b = std::min(hi, p.offset + p.numel);
      if (a < b) {
        s.shard.narrow(0, a - lo, b - a)
            .copy_(p.linear->weight.reshape({-1}).narrow(0, a - p.offset, b - a));
      }
      // A weight viewing the mapped file: drop the pages the copy read.
      io::release_mapped(p.linear->weight.data_ptr(), p.linear->weight.nbytes());
      p.linear->weight.set_data(at::empty({0}, opts));  // releases the whole weight
      p.registered = p.linear->weight;
      // An adapter made beside a host weight follows it to the device.
      if (p.linear->adapter()) p.linear->adapter()->to(device);
    }
    max_layer_numel_ = std::max(max_layer_numel_, s.chunk * world);
    held_bytes_ += s.shard.nbytes();
    full_bytes_ += s.total * s.shard.element_size();
    layers_.push_back(std::move(s));
    const size_t index = layers_.size() - 1;
    decoder->weight_scope = [this, index](model::DecoderLayerImpl&) { return gather(index); };
  }
}

ShardedBase::~ShardedBase() = default;

at::Tensor ShardedBase::buffer(int64_t numel, const at::TensorOptions& options) {
  // A buffer nothing else references (no view of it is alive: its storage has
  // one owner) is free to reuse; at most a few are ever needed at once.
  for (at::Tensor& b : pool_) {
    if (b.storage().use_count() == 1 && b.numel() >= numel) return b.narrow(0, 0, numel);
  }
  at::Tensor b = at::empty({max_layer_numel_}, options);
  if (pool_.size() < 4) pool_.push_back(b);  // in use at once: this, the prefetch, backward's
  return b.narrow(0, 0, numel);
}

at::Tensor ShardedBase::start_gather(size_t index, std::unique_ptr<dist::Group::Pending>* pending) {
  Layer& s = layers_[index];
  // Reused buffers, not fresh allocations: the host allocator keeps freed
  // blocks of this size resident, which would undo the sharding.
  at::Tensor whole = buffer(s.chunk * group_.world_size(), s.shard.options());
  *pending = group_.all_gather_async(whole, s.shard);  // [world * chunk], rank order
  return whole;
}

std::shared_ptr<void> ShardedBase::gather(size_t index) {
  Layer& s = layers_[index];
  // The layer prefetched while the previous one ran, else gathered now. A
  // prefetch of another layer (a pass that ended early) is finished first:
  // every rank issued it, so every rank must complete it.
  at::Tensor whole;
  if (prefetch_) {
    prefetch_->wait();
    prefetch_.reset();
    if (prefetch_index_ == index) whole = std::move(prefetch_buffer_);
    prefetch_buffer_ = at::Tensor();
  }
  if (!whole.defined()) {
    std::unique_ptr<dist::Group::Pending> now;
    whole = start_gather(index, &now);
    now->wait();
  }
  // Start the layer this pass runs next while this one computes: a forward
  // pass (no autograd: checkpointing's first pass, evaluation) goes up the
  // layers, backward's recomputations (autograd on) come down.
  const bool up = !at::GradMode::is_enabled();
  if (up ? index + 1 < layers_.size() : index > 0) {
    prefetch_index_ = up ? index + 1 : index - 1;
    prefetch_buffer_ = start_gather(prefetch_index_, &prefetch_);
  }
  for (Piece& p : s.pieces) {
    // The forward uses these views; autograd keeps them (and so `whole`)
    // alive for as long as the backward pass needs them.
    p.linear->weight = whole.narrow(0, p.offset, p.numel).view(p.shape);
  }
  return std::shared_ptr<void>(nullptr, [&s](void*) {
    for (Piece& p : s.pieces) p.linear->weight = p.registered;
  });
}

}  // namespace loratune::train
