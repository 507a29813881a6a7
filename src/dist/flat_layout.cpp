// A unit of tensors as one flat, padded, sharded buffer.
#include "dist/flat_layout.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.h"

namespace memo::dist {

int64_t FlatLayout::tensor_numel(size_t i) const {
  int64_t n = 1;
  for (int64_t d : shapes.at(i)) n *= d;
  return n;
}

FlatLayout flat_layout(const std::vector<std::vector<int64_t>>& shapes, int world, int rank) {
  FlatLayout l;
  l.shapes = shapes;
  int64_t total = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    l.offsets.push_back(total);
    total += l.tensor_numel(i);
  }
  l.shard = flat_shard(total, world, rank);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const int64_t begin = std::max(l.offsets[i], l.shard.begin);
    const int64_t end = std::min(l.offsets[i] + l.tensor_numel(i), l.shard.end);
    if (end > begin) l.pieces.push_back({i, begin - l.offsets[i], begin - l.shard.begin, end - begin});
  }
  return l;
}

namespace {

void check_tensors(const std::vector<const at::Tensor*>& tensors, const FlatLayout& layout, const char* what) {
  if (tensors.size() != layout.shapes.size())
    throw Error(cat(what, ": ", tensors.size(), " tensors for a layout of ", layout.shapes.size()));
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i]->numel() != layout.tensor_numel(i))
      throw Error(cat(what, ": tensor ", i, " has ", tensors[i]->numel(), " elements, the layout ",
                      layout.tensor_numel(i)));
}

}  // namespace

void flatten_into(at::Tensor& flat, const std::vector<const at::Tensor*>& tensors, const FlatLayout& layout) {
  check_tensors(tensors, layout, "flatten_into");
  if (flat.dim() != 1 || flat.numel() != layout.shard.padded)
    throw Error(cat("flatten_into: a buffer of ", flat.numel(), " for a padded unit of ", layout.shard.padded));
  for (size_t i = 0; i < tensors.size(); ++i)
    flat.narrow(0, layout.offsets[i], layout.tensor_numel(i)).copy_(tensors[i]->reshape({-1}));
  if (layout.shard.padded > layout.numel()) flat.narrow(0, layout.numel(), layout.shard.padded - layout.numel()).zero_();
}

std::vector<at::Tensor> unflatten_views(const at::Tensor& flat, const FlatLayout& layout) {
  if (flat.dim() != 1 || flat.numel() < layout.numel())
    throw Error(cat("unflatten_views: a buffer of ", flat.numel(), " for a unit of ", layout.numel()));
  std::vector<at::Tensor> views;
  for (size_t i = 0; i < layout.shapes.size(); ++i)
    views.push_back(flat.narrow(0, layout.offsets[i], layout.tensor_numel(i)).view(layout.shapes[i]));
  return views;
}

void shard_from_tensors(at::Tensor& shard, const std::vector<const at::Tensor*>& tensors,
                        const FlatLayout& layout) {
  check_tensors(tensors, layout, "shard_from_tensors");
  if (shard.dim() != 1 || shard.numel() != layout.shard.shard)
    throw Error(cat("shard_from_tensors: a buffer of ", shard.numel(), " for a shard of ", layout.shard.shard));
  shard.zero_();
  for (const auto& p : layout.pieces)
    shard.narrow(0, p.shard_begin, p.length).copy_(tensors[p.tensor]->reshape({-1}).narrow(0, p.tensor_begin, p.length));
}

std::vector<at::Tensor> piece_views(const at::Tensor& shard, const FlatLayout& layout) {
  if (shard.dim() != 1 || shard.numel() != layout.shard.shard)
    throw Error(cat("piece_views: a buffer of ", shard.numel(), " for a shard of ", layout.shard.shard));
  std::vector<at::Tensor> views;
  for (const auto& p : layout.pieces) views.push_back(shard.narrow(0, p.shard_begin, p.length));
  return views;
}

}  // namespace memo::dist
