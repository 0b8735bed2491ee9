// Each op's entry point registers its functions on the module.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

namespace cryoorient {

// Pointers arrive from Python as integers.
template <typename T = void>
inline T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

void register_qdist(pybind11::module_& m);
void register_align_loss(pybind11::module_& m);
void register_pair_loss(pybind11::module_& m);
void register_allpairs(pybind11::module_& m);
void register_angle_sums(pybind11::module_& m);

}  // namespace cryoorient
