"""A stand-in for PYNQ's PynqBuffer design, written for this benchmark only.

PYNQ's buffer is a pure-Python ndarray subclass: a Python __new__ that stores
the device address and friends as instance attributes, and a Python
__array_finalize__ that recomputes the device address of every view from the
difference of the two arrays' virtual addresses. This class does the same work
so the benchmark can show what that design costs next to pynq_alloc's C type.
It is not PYNQ's code and allocates nothing on a device."""
import numpy as np


class PynqLikeBuffer(np.ndarray):
    def __new__(cls, shape, dtype, buffer, device_address=0, coherent=False):
        self = super().__new__(cls, shape, dtype, buffer=buffer)
        self.device_address = device_address
        self.coherent = coherent
        self.bo = 0
        self.device_ = None  # PYNQ names it `device`, which NumPy 2 made a read-only ndarray attribute
        self.offset = 0
        return self

    def __array_finalize__(self, parent):
        if isinstance(parent, PynqLikeBuffer) and parent.coherent is not None:
            delta = self.virtual_address - parent.virtual_address
            self.coherent = parent.coherent
            self.device_address = parent.device_address + delta
            self.offset = parent.offset + delta
            self.device_ = parent.device_
            self.bo = parent.bo
        else:
            self.device_address = None
            self.coherent = None

    @property
    def physical_address(self):
        return self.device_address

    @property
    def virtual_address(self):
        return self.__array_interface__["data"][0]
