import pytest
from django.test import override_settings

from kohakku_controller.conf import kohakku_settings
from kohakku_controller.pagination import LinkHeaderPagination


def test_defaults_apply_when_unset():
    with override_settings(KOHAKKU_CONTROLLER={}):
        assert kohakku_settings.PAGE_SIZE == 50
        assert kohakku_settings.PAGINATION_CLASS is LinkHeaderPagination


def test_changes_apply_at_once_and_revert():
    with override_settings(KOHAKKU_CONTROLLER={"PAGE_SIZE": 7}):
        assert kohakku_settings.PAGE_SIZE == 7
    assert kohakku_settings.PAGE_SIZE == 50


def test_unknown_attribute_is_an_error():
    with pytest.raises(AttributeError, match="Invalid KOHAKKU_CONTROLLER setting"):
        kohakku_settings.NOT_A_SETTING  # noqa: B018


def test_bad_import_string_names_the_setting():
    with (
        override_settings(KOHAKKU_CONTROLLER={"PAGINATION_CLASS": "nowhere.Pager"}),
        pytest.raises(ImportError, match="PAGINATION_CLASS"),
    ):
        kohakku_settings.PAGINATION_CLASS  # noqa: B018
