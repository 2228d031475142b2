"""Cache stores: a small interface (`Store`) and its implementations."""

from proxy.store.base import Store, StoreInfo

__all__ = ["Store", "StoreInfo"]
